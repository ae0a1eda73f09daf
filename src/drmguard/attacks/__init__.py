"""Backdoor attacks adapted to deep regression (target vector y_t instead of a target class).

========== =================================================== ============================
name       attack                                              training
========== =================================================== ============================
badnets    red corner patch (Gu et al. 2017)                   dirty-label data poisoning
clean_label patch on PGD-hardened near-target samples (Turner)  data poisoning, surrogate PGD
wanet      fixed smooth warp (Nguyen & Tran 2021)              per batch, noise mode
ia         input-aware generator trigger (Nguyen & Tran 2020)  generator co-training
blend      blended noise key image (Chen et al. 2017)          dirty-label data poisoning
sig        horizontal sinusoid (Barni et al. 2019)             data poisoning (3 modes)
multi_wanet two warps, two targets (DRMGuard App. A.7)          per batch, noise mode
adaptive   base attack + λ_adp·|RAV_batch − 1| (DRMGuard Eq. 6) per batch, extra loss term
custom     user patch+mask image or blend image                dirty-label data poisoning
========== =================================================== ============================

``make_attack(name, target, task=..., image_size=...)`` builds one; ``attack.apply(x)`` is the
trigger; ``attack.train_backdoored(...)`` trains a backdoored model; ``attack.save(model_dir)``
stores it next to the model and :func:`load_attack` reads it back.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DrmguardError, first_line
from ..registry import Registry
from .adaptive import Adaptive
from .badnets import BadNets
from .base import TRIGGER_FILE, Attack, attack_train_config
from .blend import Blend
from .clean_label import CleanLabel
from .custom import Custom
from .input_aware import InputAware
from .sig import SIG
from .wanet import MultiTargetWaNet, WaNet

ATTACKS: Registry = Registry("attack", normalise=lambda s: s.lower().replace("-", "_"))
for _cls, _aliases in ((BadNets, ("bad_nets",)), (CleanLabel, ("cl",)), (WaNet, ()),
                       (InputAware, ("input_aware",)), (Blend, ("blended",)), (SIG, ()),
                       (MultiTargetWaNet, ("multi_target_wanet",)), (Adaptive, ()),
                       (Custom, ())):
    ATTACKS.register(_cls.name, _cls, aliases=_aliases)
ALIASES = ATTACKS.aliases  # alias -> name


def attack_class(name: str) -> type[Attack]:
    return ATTACKS.get(name)


def make_attack(name: str, target, *, task, image_size, channels: int = 3, seed: int = 0,
                profile: str = "cpu", **options) -> Attack:
    """Build attack ``name`` for ``task`` (a Task or its name) and ``image_size`` (side or
    (H, W)). ``target``: K values, or T rows of K values for multi-target attacks; the option
    ``targets`` (T rows), when given, replaces it."""
    targets = options.pop("targets", None)
    return attack_class(name)(target if targets is None else targets, task=task,
                              image_size=image_size, channels=channels, seed=seed,
                              profile=profile, **options)


def load_attack(model_dir: str | Path) -> Attack | None:
    """The attack recorded with a saved model, or None when the model records none."""
    from safetensors.torch import load_file

    from ..models.io import read_meta
    from ..tasks import get_task

    p = Path(model_dir)
    if p.is_file():
        p = p.parent
    meta = read_meta(p)
    rec = meta.get("attack")
    if not rec:
        return None
    try:
        name, targets, config = rec["name"], rec.get("targets") or [rec["target"]], \
            dict(rec.get("config") or {})
    except (KeyError, TypeError):
        raise DrmguardError(f"{p}/model.json has a malformed 'attack' record") from None
    trigger = p / TRIGGER_FILE
    if not trigger.exists():
        raise DrmguardError(f"{p} records attack '{name}' but has no {TRIGGER_FILE}")
    try:
        state = load_file(str(trigger))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise DrmguardError(f"cannot read {trigger}: {first_line(e)}") from None
    state.pop("_empty", None)
    task_rec = meta.get("task") or {}
    task = get_task(task_rec.get("name", "generic"), dim=task_rec.get("dim", len(targets[0])),
                    target_names=task_rec.get("target_names")
                    if task_rec.get("name", "generic") == "generic" else None)
    seed, profile = config.pop("seed", 0), config.pop("profile", "cpu")
    return attack_class(name)(targets if len(targets) > 1 else targets[0], task=task,
                              image_size=meta["input_size"],
                              channels=meta.get("in_channels", 3), seed=seed, profile=profile,
                              state=state, **config)


__all__ = ["ATTACKS", "Attack", "attack_class", "attack_train_config", "make_attack",
           "load_attack", "TRIGGER_FILE"]
