"""Backdoor mitigation [paper]: fine-tune F on D_b ∪ D_r, D_r = {(x̃, y) : (x, y) ∈ D_b}.

x̃ is the reversed trigger of a DRMGuard scan applied to a benign image, y its *correct* label,
so the model unlearns "trigger ⇒ target". Every fine-tuning batch holds a batch of D_b and the
same images with the reversed trigger (each epoch sees D_b ∪ D_r exactly once). The trigger is
applied on the fly in float precision (the reversed perturbation is often below one grey level,
so storing D_r as uint8 images would erase it).

The input model is never modified: the fine-tuned model is a deep copy.
"""

from __future__ import annotations

import copy
import time

import torch

from ...data.base import ArrayDataset
from ...errors import DrmguardError
from ...tasks import Task
from ...training import TrainConfig, evaluate, fit
from .config import DRMGuardConfig, default_config
from .scan import ScanResult, scan


def mitigate(model, benign: ArrayDataset, task: Task, scan_result: ScanResult | None = None,
             config: DRMGuardConfig | None = None, seed: int = 0,
             progress: bool = True):
    """Fine-tune a copy of ``model`` against the reversed trigger; returns (new model, info).

    Without ``scan_result`` a scan is run first; with one (e.g. ``ScanResult.load`` of a file
    written by ``ScanResult.save``) its trigger is used as it is. The fine-tuning runs whatever
    the verdict (the caller asked for mitigation); ``info["scan"]`` records the verdict it was
    based on.
    """
    cfg = config or default_config("cpu", task.name)
    reused = scan_result is not None
    if reused:
        _check_scan_fits(scan_result, model, task)
    else:
        scan_result = scan(model, benign, task, cfg, seed=seed, progress=progress)
    trigger = scan_result.reverse

    def with_reversed(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
        return torch.cat([x, trigger(x)]), torch.cat([y, y])

    new = copy.deepcopy(model)
    train_cfg = TrainConfig(epochs=cfg.ft_epochs, batch_size=cfg.ft_batch_size, lr=cfg.ft_lr,
                            schedule="cosine", device=cfg.device, seed=seed)
    t0 = time.perf_counter()
    history = fit(new, benign, task, train_cfg, batch_fn=with_reversed, progress=progress,
                  desc="DRMGuard mitigation") if cfg.ft_epochs > 0 else {"steps": 0}
    new = new.cpu().eval()
    info = {
        "defense": "drmguard",
        "scan": scan_result.to_dict(),
        "scan_reused": reused,
        "finetune": {**train_cfg.to_dict(), **history},
        "benign_error_after": evaluate(new, benign, task)["error"],
        "seconds": time.perf_counter() - t0,
    }
    return new, info


def _check_scan_fits(res: ScanResult, model, task: Task) -> None:
    """A scan given to :func:`mitigate` must come from a model of the same shape and task."""
    if res.trigger is None:
        raise DrmguardError("the scan result holds no trigger function (loaded from JSON?)")
    gen = res.trigger.generator
    if (gen.channels, *gen.size) != (model.in_channels, *model.input_size):
        raise DrmguardError(f"the reversed trigger is for {gen.channels}×{gen.size[0]}×"
                            f"{gen.size[1]} images, the model takes {model.in_channels}×"
                            f"{model.input_size[0]}×{model.input_size[1]}")
    if len(res.target_estimate) != task.dim:
        raise DrmguardError(f"the scan is of a {len(res.target_estimate)}-output model, task "
                            f"{task.name} has {task.dim} outputs")
