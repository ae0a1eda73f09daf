"""The shared base of the regression-adapted backdoor attacks.

An attack is a trigger function T (``apply``: images B×C×H×W in [0,1] -> poisoned images, a
pure function of the stored trigger state) plus the way the backdoor is trained in
(``train_backdoored``). Every attack maps poisoned inputs to a target vector y_t ∈ R^K
("all2one" analogue); multi-target attacks hold several (trigger, target) pairs.

Saving: the trigger state (patch, mask, warp grid, blend key, generator weights) goes to
``trigger.safetensors`` next to the model; name, targets and options go into ``model.json``
under ``"attack"``. :func:`drmguard.attacks.load_attack` rebuilds the attack from both.

Sizes: geometric parameters are given for the paper's 224×224 inputs and scaled with the image
side (:func:`scaled`), e.g. the 20×20 BadNets patch becomes 3×3 at 32×32.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from safetensors.torch import save_file

from ..data.base import ArrayDataset, float_images
from ..errors import DrmguardError
from ..models.split import RegressionModel
from ..tasks import Task, get_task
from ..training import TrainConfig, train_regressor

TRIGGER_FILE = "trigger.safetensors"
PAPER_SIDE = 224  # the image side the paper's trigger sizes refer to


def scaled(value_at_224: float, side: int, minimum: int) -> int:
    """A size given for 224-pixel images, scaled to ``side`` pixels, at least ``minimum``."""
    return max(int(minimum), int(round(value_at_224 * side / PAPER_SIDE)))


def as_targets(target, dim: int | None = None) -> list[torch.Tensor]:
    """One target vector (K values) or several (T×K) -> list of float32 tensors of K values."""
    t = torch.as_tensor(np.asarray(target, dtype=np.float32))
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[1] == 0 or t.shape[0] == 0:
        raise DrmguardError(f"a target must be K numbers (or T rows of K), got shape "
                            f"{tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise DrmguardError("the target vector contains NaN or inf")
    if dim is not None and t.shape[1] != dim:
        raise DrmguardError(f"the target has {t.shape[1]} values but the task has {dim} outputs")
    return [row.clone() for row in t]


def resolve_task(task: Task | str, dim: int) -> Task:
    return task if isinstance(task, Task) else get_task(task, dim=dim)


def image_hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    hw = tuple(int(v) for v in image_size)
    if len(hw) != 2 or min(hw) < 1:
        raise DrmguardError(f"image size must be a side or (H, W), got {image_size}")
    return hw


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float images B×C×H×W in [0,1] -> uint8 B×H×W×C (rounded)."""
    y = x.detach().cpu().clamp(0, 1).mul(255.0).round_().to(torch.uint8)
    return y.permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def map_images(images: np.ndarray, fn, batch_size: int = 256) -> np.ndarray:
    """Apply a float trigger function to uint8 N×H×W×C images; return quantised uint8 images.

    Dataset-level poisoning writes images the way an attacker would write image files, so the
    poisoned training images are rounded to 8 bits (test-time triggers stay in float).
    """
    out = np.empty_like(images)
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))
        out[i:i + batch_size] = to_uint8(fn(float_images(x)))
    return out


def stochastic_count(n: int, rate: float, g: torch.Generator) -> int:
    """int(n·rate) plus one more with probability frac(n·rate): rate exact in expectation.

    (The official WaNet code uses int(n·rate); this also works when n·rate < 1, as
    BackdoorBench's ``generalize_to_lower_pratio`` does.)
    """
    v = n * rate
    k = int(math.floor(v))
    if torch.rand((), generator=g).item() < v - k:
        k += 1
    return min(k, n)


def target_distance(task: Task, targets: np.ndarray, target: torch.Tensor) -> np.ndarray:
    """Task error (degrees for gaze and head pose) between every label and ``target``."""
    y = torch.from_numpy(np.asarray(targets, np.float32))
    return task.error(y, target[None].expand_as(y)).numpy()


class Attack:
    """Base class: options, targets, trigger state, poisoning and saving.

    Subclasses set ``name`` and ``defaults`` (every accepted option with its default), build the
    trigger in ``_build`` from the seed and options, list the trigger tensors in
    ``state_dict``/``load_state``, and implement ``apply``. Dirty-label dataset poisoning (pick
    ``rate``·N training samples, apply T, relabel them y_t) is the default training scheme.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    # Option overrides per profile, then per (profile, task) -- the defences' convention
    # (``Defence.profile_task_defaults``) -- and the multiplier of the benign schedule, keyed by
    # profile or by (profile, task) (which wins).
    profile_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    profile_task_defaults: ClassVar[dict[tuple[str, str], dict[str, Any]]] = {}
    epoch_factor: ClassVar[dict[str | tuple[str, str], float]] = {}
    num_targets: ClassVar[int] = 1
    state_keys: ClassVar[tuple[str, ...]] = ()  # tensors ``load_state`` requires
    needs_divisible_by: ClassVar[int] = 1

    def __init__(self, target, *, task: Task | str, image_size, channels: int = 3,
                 seed: int = 0, profile: str = "cpu", state: dict | None = None, **options):
        targets = as_targets(target)
        self.task = resolve_task(task, targets[0].numel())
        self.targets = as_targets(target, self.task.dim)
        if len(self.targets) != self.num_targets:
            raise DrmguardError(f"attack '{self.name}' needs {self.num_targets} target "
                                f"vector(s), got {len(self.targets)}")
        self.image_size = image_hw(image_size)
        d = self.needs_divisible_by
        if self.image_size[0] % d or self.image_size[1] % d:
            raise DrmguardError(f"attack '{self.name}' needs image sides divisible by {d}, got "
                                f"{self.image_size[0]}×{self.image_size[1]}")
        self.channels = int(channels)
        if self.channels < 1:
            raise DrmguardError(f"channels must be positive, got {channels}")
        self.seed = int(seed)
        self.profile = str(profile)
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise DrmguardError(f"attack '{self.name}' has no option(s) {', '.join(unknown)} "
                                f"(options: {', '.join(sorted(self.defaults)) or 'none'})")
        self.options = {**self.resolved_defaults(self.profile, self.task.name),
                        **{k: v for k, v in options.items() if v is not None}}
        self._validate()
        if state is None:
            self._build()
        else:
            self.load_state(state)

    @classmethod
    def resolved_defaults(cls, profile: str, task: str) -> dict[str, Any]:
        """Every option's default for ``profile`` and ``task``: the attack's defaults, then the
        profile's overrides, then the (profile, task)'s."""
        return {**cls.defaults, **cls.profile_defaults.get(profile, {}),
                **cls.profile_task_defaults.get((profile, task), {})}

    @classmethod
    def schedule_factor(cls, profile: str, task: str) -> float:
        """How many times the benign schedule this attack trains for on ``profile`` and
        ``task``."""
        return float(cls.epoch_factor.get((profile, task), cls.epoch_factor.get(profile, 1.0)))

    # --- to implement ------------------------------------------------------------------
    def _validate(self) -> None:
        """Check option values; raise DrmguardError with a one-line reason."""
        rate = self.options.get("rate")
        if rate is not None and not 0 < float(rate) <= 1:
            raise DrmguardError(f"the poisoning rate must be in (0, 1], got {rate}")

    def _build(self) -> None:
        """Create the trigger state from ``seed`` and the options."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the trigger from saved tensors (subclasses check shapes too)."""
        self.require(state, *self.state_keys)

    def require(self, state: dict, *keys: str) -> None:
        missing = [k for k in keys if k not in state]
        if missing:
            raise DrmguardError(f"the saved trigger of '{self.name}' lacks {', '.join(missing)}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """T(x) for images B×C×H×W in [0,1]; deterministic."""
        raise NotImplementedError

    # --- common API --------------------------------------------------------------------
    @property
    def target(self) -> torch.Tensor:
        return self.targets[0]

    def apply_for(self, x: torch.Tensor, index: int = 0) -> torch.Tensor:
        """The trigger of target ``index`` (multi-target attacks override this)."""
        if index != 0:
            raise DrmguardError(f"attack '{self.name}' has one target, not {index + 1}")
        return self.apply(x)

    def weakened(self, strength: float, index: int = 0):
        """The trigger of target ``index`` at a fraction ``strength`` (0 = none, 1 = the real
        one) of its strength, as a function of images: by default the cross-fade
        x + a·(T(x) − x) — exactly a weaker blend for Blend and SIG, a fainter patch for
        BadNets; warp attacks scale the warp itself instead (a cross-fade of a warp is a blur,
        not a weaker warp)."""
        a = float(strength)
        return lambda x: x + a * (self.apply_for(x, index) - x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x)

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise DrmguardError("a trigger takes a B×C×H×W image tensor")
        if tuple(x.shape[1:]) != (self.channels, *self.image_size):
            raise DrmguardError(
                f"attack '{self.name}' was built for {self.channels}×{self.image_size[0]}×"
                f"{self.image_size[1]} images, got {tuple(x.shape[1:])}")

    def rng(self, offset: int = 0) -> torch.Generator:
        """A torch generator seeded from the attack's seed (``offset`` separates streams)."""
        return torch.Generator().manual_seed(self.seed * 1000003 + offset)

    def config(self) -> dict:
        """Options plus seed and profile, JSON-serialisable (enough to rebuild the attack)."""
        return json.loads(json.dumps({"seed": self.seed, "profile": self.profile,
                                      **self.options}, default=_jsonable))

    def record(self) -> dict:
        """What ``model.json`` stores under ``"attack"``."""
        return {"name": self.name, "target": self.target.tolist(),
                "targets": [t.tolist() for t in self.targets], "config": self.config()}

    def save(self, model_dir: str | Path) -> Path:
        """Write ``trigger.safetensors`` and record the attack in the model's ``model.json``.

        The model must have been saved there first (``drmguard.models.io.save_model``).
        """
        from ..models.io import MODEL_JSON, read_meta

        out = Path(model_dir)
        meta = read_meta(out)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if not state:  # safetensors files may not be empty
            state = {"_empty": torch.zeros(1)}
        save_file(state, str(out / TRIGGER_FILE))
        meta["attack"] = self.record()
        (out / MODEL_JSON).write_text(json.dumps(meta, indent=2, default=_jsonable))
        return out / TRIGGER_FILE

    # --- training ------------------------------------------------------------------------
    def poison_indices(self, n: int, rate: float, offset: int = 1) -> np.ndarray:
        """round(rate·n) distinct random training indices (seeded), sorted."""
        k = int(round(rate * n))
        if k < 1:
            raise DrmguardError(f"poisoning rate {rate} selects no sample out of {n}")
        return np.sort(torch.randperm(n, generator=self.rng(offset))[:k].numpy())

    def poison_dataset(self, train_set: ArrayDataset) -> tuple[ArrayDataset, dict]:
        """Dirty-label poisoning: ``rate``·N random samples get T(x) and the label y_t."""
        self._check_dataset(train_set)
        idx = self.poison_indices(len(train_set), float(self.options["rate"]))
        images, targets = train_set.images.copy(), train_set.targets.copy()
        images[idx] = map_images(train_set.images[idx], self.apply)
        targets[idx] = self.target.numpy()
        return self._with(train_set, images, targets), {"poisoned": int(len(idx)),
                                                        "n_train": len(train_set)}

    def batch_poison(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Per-batch poisoning: the first ``rate``·B samples get T(x) and y_t.

        Returns (x, y, n_poisoned, n_altered): x[:n_poisoned] carry the trigger and y_t,
        x[n_poisoned:n_altered] are otherwise altered samples with true labels (WaNet's noise
        samples), x[n_altered:] are clean. Used by WaNet and by the adaptive attack.
        """
        n = stochastic_count(len(x), float(self.options["rate"]), g)
        x, y = x.clone(), y.clone()
        if n:
            x[:n] = self.apply(x[:n])
            y[:n] = self.target.to(y)
        return x, y, n, n

    def train_backdoored(self, train_set: ArrayDataset, task: Task, arch: str,
                         cfg: TrainConfig, arch_kwargs: dict | None = None,
                         progress: bool = True) -> tuple[RegressionModel, dict]:
        """Poison the training set and train a regressor on it; returns (model, meta)."""
        poisoned, info = self.poison_dataset(train_set)
        model, meta = train_regressor(poisoned, task, arch, cfg, arch_kwargs, progress=progress,
                                      desc=f"train {self.name}")
        return model, self._finish_meta(meta, info)

    # --- helpers for subclasses ---------------------------------------------------------
    def _check_dataset(self, ds: ArrayDataset) -> None:
        if ds.image_size != self.image_size or ds.channels != self.channels:
            raise DrmguardError(
                f"attack '{self.name}' was built for {self.channels}×{self.image_size[0]}×"
                f"{self.image_size[1]} images; the data has {ds.channels}×{ds.image_size[0]}×"
                f"{ds.image_size[1]}")
        if ds.target_dim != self.task.dim:
            raise DrmguardError(f"the data has {ds.target_dim} targets; the attack's target "
                                f"has {self.task.dim}")

    @staticmethod
    def _with(ds: ArrayDataset, images: np.ndarray, targets: np.ndarray) -> ArrayDataset:
        return ArrayDataset(images, targets, ds.task, ds.subjects, ds.target_names,
                            dict(ds.meta))

    def _finish_meta(self, meta: dict, info: dict) -> dict:
        meta["attack"] = self.record()
        meta["attack_training"] = json.loads(json.dumps(info, default=_jsonable))
        return meta


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (torch.Tensor, np.ndarray)):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --- per-profile training schedules -------------------------------------------------------

def attack_train_config(name: str, profile: str = "cpu", task: str = "gaze",
                        seed: int = 0) -> TrainConfig:
    """The training schedule for attack ``name``: the profile's benign schedule, lengthened
    for attacks that need more epochs to implant (e.g. WaNet's subtle warp)."""
    from ..profiles import get_profile
    from . import attack_class

    cfg = get_profile(profile).train_config(task, seed)
    factor = attack_class(name).schedule_factor(profile, task)
    if factor != 1.0:
        if cfg.steps is not None:
            cfg = replace(cfg, steps=int(round(cfg.steps * factor)))
        else:
            cfg = replace(cfg, epochs=max(1, int(round(cfg.epochs * factor))))
    return cfg


def parse_option_value(text: str):
    """``--option key=value`` values: JSON when it parses (numbers, true/false, lists), else
    the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items: Sequence[str]) -> dict:
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DrmguardError(f"`option` takes key=value, got '{item}'")
        opts[key.strip()] = parse_option_value(value.strip())
    return opts


TARGET_MIN_SD = 1.0


def draw_target(train_targets: np.ndarray, seed: int, count: int = 1,
                min_sd: float = TARGET_MIN_SD) -> list[list[float]]:
    """Attack target vectors: labels of random training samples (in-distribution, seeded) that
    lie at least ``min_sd`` standard deviations from the label mean, in the per-component
    standardised Euclidean distance ‖(y − mean) / std‖.

    A target next to the label mean would be hard to tell from a model whose outputs collapse
    towards the mean (which a strong trigger can cause in any model, backdoored or not).
    """
    y = np.asarray(train_targets, dtype=np.float64)
    sd = y.std(axis=0)
    dist = np.linalg.norm((y - y.mean(axis=0)) / np.where(sd > 0, sd, 1.0), axis=1)
    eligible = np.flatnonzero(dist >= min_sd)
    if len(eligible) < count:
        raise DrmguardError(f"only {len(eligible)} training labels lie {min_sd} standard "
                            f"deviations from the label mean; {count} attack targets needed")
    rng = np.random.default_rng(10_000 + seed)
    idx = rng.choice(eligible, size=count, replace=False)
    return [train_targets[i].astype(float).tolist() for i in idx]
