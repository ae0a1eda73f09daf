"""Fine-pruning (Liu, Dolan-Gavitt, Garg, RAID 2018) with the regression loss.

1. Split D_b into a fit part and a held-out part (``holdout_fraction``).
2. Rank the channels of F's last convolutional block by their mean activation over the fit part
   (the spatial map feeding the global pooling, averaged over samples and positions; see
   ``_common.find_spatial_layer``: ``layers[-1]`` of the small ResNet, ``layer4`` of torchvision
   ResNets, ``features`` of MobileNetV1).
3. Prune channels in increasing order of activation, in steps of ``prune_step`` (1%) of the
   channels, while the clean error on the held-out part stays within (1 + ``error_budget``)× the
   unpruned error (10%, the BackdoorBench analogue; 4% is the paper's stricter analogue).
4. Fine-tune on all of D_b with the task's L1 loss, keeping the pruned channels at zero: by
   default as DRMGuard's and the fine-tuning baseline's mitigation (Adam lr 5e-4, cosine, 10
   epochs, batch 32); ``optimizer="sgd"``, ``lr=0.01``, ``weight_decay=5e-4`` gives the
   classification recipe (BackdoorBench), which wrecked the clean error of our cpu gaze models.

A channel is pruned by zeroing its column of the linear head's weight. With global average (or
max) pooling feeding the head directly this is exactly the removal of the channel from the last
block (it is checked numerically, and refused otherwise); it also survives saving the weights.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..data.base import ArrayDataset
from ..errors import DrmguardError
from ..models.split import RegressionModel
from ..tasks import Task
from . import _common as C
from .base import Defence


@dataclass
class FinePruningConfig:
    error_budget: float = 0.10  # relative clean-error increase allowed (0.04: paper analogue)
    prune_step: float = 0.01  # fraction of the channels pruned per step
    max_prune_fraction: float = 0.95
    holdout_fraction: float = 0.2
    finetune_epochs: int = 10
    optimizer: str = "adam"  # adam | sgd
    lr: float = 5e-4
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    batch_size: int = 32
    schedule: str = "cosine"  # cosine | none
    normalise_loss: bool = True  # L1 per component divided by the benign label std
    feature_layer: str | None = None
    device: str = "auto"

    def __post_init__(self):
        C.check(self.error_budget >= 0, "error_budget must be >= 0")
        C.check(0 < self.prune_step <= 1 and 0 < self.max_prune_fraction <= 1,
                "prune_step and max_prune_fraction must be in (0, 1]")
        C.check(self.finetune_epochs >= 0, "finetune_epochs must be >= 0")




def channel_activations(model: RegressionModel, ds: ArrayDataset, layer: str | None = None
                        ) -> tuple[np.ndarray, C.SpatialTap]:
    """Mean activation per channel of the last spatial feature map over ``ds``."""
    tap = C.SpatialTap(model, layer)
    feats = tap.features(ds)
    if feats.dim() != 4:
        raise DrmguardError(f"the feature map at {tap.describe()} is not B×C×h×w")
    _check_head_equivalence(model, tap, ds)
    return feats.mean((0, 2, 3)).cpu().numpy(), tap


def _check_head_equivalence(model: RegressionModel, tap: C.SpatialTap, ds: ArrayDataset) -> None:
    """The head's input must be the globally pooled map, so that zeroing head column k removes
    channel k of the map."""
    device = next(model.parameters()).device
    x, _ = ds.tensors(np.arange(min(8, len(ds))))
    model.eval()
    with torch.no_grad(), tap.capture():
        h, _ = model.forward_with_features(x.to(device))
        a = tap.last
    ok = h.shape[1] == a.shape[1] and (torch.allclose(h, a.mean((2, 3)), atol=1e-4, rtol=1e-3)
                                       or torch.allclose(h, a.amax((2, 3)), atol=1e-4, rtol=1e-3))
    if not ok:
        raise DrmguardError(f"fine-pruning needs the feature map ({tap.describe()}) to be globally "
                            "pooled straight into the linear head; name another map with "
                            "feature_layer or use another defence")


def apply_pruning(model: RegressionModel, channels: list[int]) -> RegressionModel:
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.head.weight[:, channels] = 0.0
    return out.eval()


class FinePruningMitigator(Defence):
    name, title, config_class = "fp", "fine-pruning", FinePruningConfig
    profile_defaults = {"tiny": dict(finetune_epochs=2), "cpu": dict(finetune_epochs=10),
                        "paper": dict(finetune_epochs=10)}
    min_samples = 4

    def _mitigate(self, model: RegressionModel, benign: ArrayDataset, task: Task, cfg, seed,
                  progress, prior) -> tuple[RegressionModel, dict]:
        t0 = time.perf_counter()
        base = self.working_copy(model, cfg).eval()
        fit, hold = C.holdout_split(benign, cfg.holdout_fraction, seed)
        eval_set = hold if hold is not None else fit
        act, tap = channel_activations(base, fit, cfg.feature_layer)
        order = [int(k) for k in np.argsort(act, kind="stable")]
        n = len(order)
        err0 = C.clean_error(base, eval_set, task)
        count, sweep = C.prune_within_budget(
            lambda c: C.clean_error(apply_pruning(base, order[:c]), eval_set, task), n,
            cfg.prune_step, cfg.max_prune_fraction, err0, cfg.error_budget,
            progress=progress, desc="FP prune")
        chosen = order[:count]
        pruned = apply_pruning(base, chosen)
        err_pruned = C.clean_error(pruned, eval_set, task)
        for p in pruned.parameters():
            p.requires_grad_(True)
        idx = torch.tensor(chosen, dtype=torch.long, device=pruned.head.weight.device)

        def keep_zero():
            if len(chosen):
                with torch.no_grad():
                    pruned.head.weight[:, idx] = 0.0

        hist = C.finetune_with(pruned, benign, task, cfg, epochs=cfg.finetune_epochs, seed=seed,
                               progress=progress, desc="FP fine-tune", after_step=keep_zero)
        info = {
            "defense": self.name, "layer": tap.describe(), "n_channels": n,
            "n_pruned": len(chosen), "pruned_channels": chosen,
            "mean_activation": [round(float(v), 6) for v in act],
            "prune_sweep": sweep, "error_budget": cfg.error_budget,
            "clean_error_before": err0, "clean_error_after_prune": err_pruned,
            "clean_error_on": "held-out part of D_b" if hold is not None else "D_b",
            "clean_error_after_finetune_on_benign": C.clean_error(pruned, benign, task),
            "finetune": hist, "n_fit": len(fit), "n_holdout": 0 if hold is None else len(hold),
            "seconds": time.perf_counter() - t0, "config": asdict(cfg)}
        return pruned.eval().cpu(), info


def make_config(profile: str = "cpu", task: str = "gaze", **overrides) -> FinePruningConfig:
    return FinePruningMitigator.resolve(profile, task, **overrides)


def make_mitigator(profile: str = "cpu", task: str = "gaze", **overrides) -> FinePruningMitigator:
    return FinePruningMitigator(profile, task, **overrides)
