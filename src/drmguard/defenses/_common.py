"""Helpers shared by the regression-generalised baselines (Neural Cleanse-R, FeatureRE-R, ANP,
Fine-pruning, Fine-tuning).

- the regression analogue of "attack success": an output within τ of the target vector
  (:func:`success_tolerance`, :func:`hits`);
- label statistics used to put the target vector y_t and the loss on a task-free scale;
- the spatial feature map that feeds the global pooling (:class:`SpatialTap`), read and
  optionally replaced in the forward pass;
- a held-out split of the benign set, clean error, and a plain fine-tuning loop.

Configurations, input checks, copies and devices are the :class:`~.base.Defence` base class's.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.base import ArrayDataset
from ..errors import DrmguardError
from ..models.split import RegressionModel
from ..tasks import Task
from ..training import TrainConfig, batches, fit, predict
from ..utils import progress_bar

# Success tolerance τ (in the task's error units) for "the output reached the target vector".
DEFAULT_TAU = {"gaze": 5.0, "headpose": 5.0}  # degrees: angular error / mean abs. error
GENERIC_TAU_STD_FRACTION = 0.25  # generic tasks: τ = this × mean per-component label std


def check(cond: bool, message: str) -> None:
    if not cond:
        raise DrmguardError(message)


def check_inputs(model: RegressionModel, benign: ArrayDataset, task: Task, min_samples: int = 2):
    """Common validation of (model, D_b, task)."""
    if not isinstance(model, RegressionModel):
        raise DrmguardError("the defence needs a drmguard RegressionModel (images in [0,1])")
    check(len(benign) >= min_samples,
          f"the benign set has {len(benign)} samples; at least {min_samples} are needed")
    check(benign.target_dim == task.dim == model.num_outputs,
          f"task {task.name} has {task.dim} outputs, the benign targets {benign.target_dim} "
          f"and the model {model.num_outputs}")
    check(benign.image_size == model.input_size and benign.channels == model.in_channels,
          f"benign images are {benign.channels}×{benign.image_size} but the model expects "
          f"{model.in_channels}×{model.input_size}")


def subsample(ds: ArrayDataset, max_samples: int | None, seed: int) -> ArrayDataset:
    if max_samples is None or len(ds) <= max_samples:
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), int(max_samples), replace=False))
    return ds.subset(idx)


def holdout_split(ds: ArrayDataset, fraction: float, seed: int
                  ) -> tuple[ArrayDataset, ArrayDataset | None]:
    """(fit part, held-out part) of D_b; the held-out part is None when ``fraction`` is 0."""
    check(0.0 <= fraction < 1.0, f"holdout_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return ds, None
    n_hold = max(1, int(round(fraction * len(ds))))
    check(len(ds) - n_hold >= 2, f"the benign set ({len(ds)} samples) is too small to hold "
                                 f"out {fraction:.0%}")
    perm = np.random.default_rng(seed).permutation(len(ds))
    return ds.subset(np.sort(perm[n_hold:])), ds.subset(np.sort(perm[:n_hold]))


def clean_error(model: RegressionModel, ds: ArrayDataset, task: Task) -> float:
    """Mean regression error of ``model`` on ``ds`` (eval mode)."""
    pred = predict(model, ds)
    return float(task.error(pred, torch.from_numpy(ds.targets)).mean())


# --- targets, tolerance, success ------------------------------------------------------------
def label_stats(ds: ArrayDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-component mean and std (floored) of the benign labels, as float tensors (K,)."""
    y = torch.from_numpy(ds.targets).double()
    mean, std = y.mean(0), y.std(0, unbiased=False)
    floor = max(float(std.max()) * 1e-3, 1e-6)
    return mean.float(), std.clamp_min(floor).float()


def success_tolerance(task: Task, benign: ArrayDataset, tau: float | None = None) -> float:
    """τ: an output counts as "at the target" when ``task.error(out, y_t) < τ``."""
    if tau is not None:
        check(tau > 0, f"tau must be positive, got {tau}")
        return float(tau)
    if task.name in DEFAULT_TAU:
        return DEFAULT_TAU[task.name]
    return GENERIC_TAU_STD_FRACTION * float(label_stats(benign)[1].mean())


def hits(task: Task, pred: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """Boolean (B,): the outputs within τ of the target vector(s)."""
    return task.error(pred, target.expand_as(pred)) < tau


def scaled_l1(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The task's L1 loss, optionally per component divided by ``scale`` (label std)."""
    d = (pred - target).abs()
    return (d / scale if scale is not None else d).mean()


class TargetVector(nn.Module):
    """y_t as an optimisation variable, parametrised in label-std units: y_t = μ + σ ⊙ u."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, init: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", mean.clone().float())
        self.register_buffer("std", std.clone().float())
        u0 = torch.zeros_like(self.mean) if init is None else (init.float() - self.mean) / self.std
        self.u = nn.Parameter(u0)

    def forward(self) -> torch.Tensor:
        return (self.mean + self.std * self.u).unsqueeze(0)

    def value(self) -> list[float]:
        return [float(v) for v in self.forward().detach().cpu()[0]]


# --- the spatial feature map feeding the global pooling -------------------------------------
POOLING = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool2d)


def find_spatial_layer(model: RegressionModel, layer: str | None = None) -> tuple[str, str]:
    """(module name, "input" | "output"): where F's last spatial feature map is read.

    By default it is the **input** of the last pooling module executed before the linear head
    (``pool`` of the small ResNet and MobileNetV1, ``avgpool`` of torchvision ResNets, i.e. the
    output of the last residual stage ``layers[-1]`` / ``layer4`` / ``features``). Without such
    a module, it is the output of the last module before the head that yields a B×C×h×w map.
    ``layer`` names a module explicitly; its output is then used.
    """
    modules = dict(model.net.named_modules())
    if layer is not None:
        check(layer in modules, f"no module named '{layer}' in the model "
                                f"(e.g. {', '.join(list(modules)[1:8])} ...)")
        return layer, "output"
    order: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_hook(
        lambda mod, inp, out, n=name: order.append((n, mod, inp[0] if inp else None, out)))
        for name, m in modules.items() if name]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.rand(2, model.in_channels, *model.input_size,
                             device=next(model.parameters()).device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    names = [o[0] for o in order]
    check(model.head_name in names, "the linear head was not called in the forward pass")
    before = order[:names.index(model.head_name)]
    for name, mod, inp, _ in reversed(before):
        if isinstance(mod, POOLING) and isinstance(inp, torch.Tensor) and inp.dim() == 4:
            return name, "input"
    for name, mod, _, out in reversed(before):
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            return name, "output"
    raise DrmguardError("no spatial (B×C×h×w) feature map before the linear head; name one "
                        "with the feature_layer option")


class SpatialTap:
    """Reads, and optionally replaces, the spatial feature map A = F(x) (B×C×h×w).

    ``with tap.capture(fn)``: during forward passes, ``tap.last`` holds the feature map and, if
    ``fn`` is given, the network continues from ``fn(A)`` instead of ``A``.
    """

    def __init__(self, model: RegressionModel, layer: str | None = None):
        self.model = model
        self.name, self.where = find_spatial_layer(model, layer)
        self.module = dict(model.net.named_modules())[self.name]
        self.last: torch.Tensor | None = None
        self._fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _pre(self, module, inputs):
        self.last = inputs[0]
        if self._fn is not None:
            return (self._fn(inputs[0]),) + tuple(inputs[1:])
        return None

    def _post(self, module, inputs, output):
        self.last = output
        return self._fn(output) if self._fn is not None else None

    @contextmanager
    def capture(self, fn: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self._fn = fn
        handle = (self.module.register_forward_pre_hook(self._pre) if self.where == "input"
                  else self.module.register_forward_hook(self._post))
        try:
            yield self
        finally:
            handle.remove()
            self._fn = None

    @torch.no_grad()
    def features(self, ds: ArrayDataset, batch_size: int = 256) -> torch.Tensor:
        """Feature maps of every image of ``ds`` (model in eval mode), on the model's device."""
        device = next(self.model.parameters()).device
        self.model.eval()
        out = []
        with self.capture():
            for x, _ in batches(ds, batch_size, shuffle=False):
                self.model(x.to(device))
                out.append(self.last.detach())
        return torch.cat(out)

    def describe(self) -> str:
        return f"{self.where} of '{self.name}'"


# --- fine-tuning ---------------------------------------------------------------------------
def finetune(model: RegressionModel, ds: ArrayDataset, task: Task, *, optimizer: str, lr: float,
             epochs: int, batch_size: int, weight_decay: float = 0.0, momentum: float = 0.9,
             schedule: str = "cosine", normalise_loss: bool = True, seed: int = 0,
             progress: bool = True, desc: str = "fine-tune",
             after_step: Callable[[], None] | None = None) -> dict:
    """Fine-tune ``model`` in place on ``ds`` with the L1 loss to the true labels (train mode,
    BN statistics updated), through the one training loop :func:`drmguard.training.fit` (that
    of DRMGuard's mitigation too). With ``normalise_loss`` each component's error is divided by
    the label std of ``ds``, so SGD learning rates mean the same for radians and degrees;
    batches of one image are skipped (BatchNorm)."""
    check(epochs >= 0, f"epochs must be >= 0, got {epochs}")
    check(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
    check(schedule in ("cosine", "none"), f"unknown schedule '{schedule}' (cosine or none)")
    device = next(model.parameters()).device
    scale = label_stats(ds)[1].to(device) if normalise_loss else None
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      schedule=schedule, device=str(device), seed=seed)
    losses: list[float] = []
    fit(model, ds, task, cfg, loss_fn=lambda m, x, y: scaled_l1(m(x), y, scale),
        progress=progress, desc=desc, params=[p for p in model.parameters() if p.requires_grad],
        optimizer=optimizer, momentum=momentum, min_batch=2, after_step=after_step,
        losses=losses)
    return {"steps": len(losses), "final_loss": float(np.mean(losses[-10:])) if losses else None}


def finetune_with(model: RegressionModel, ds: ArrayDataset, task: Task, config, *, epochs: int,
                  seed: int = 0, progress: bool = True, desc: str = "fine-tune",
                  after_step: Callable[[], None] | None = None) -> dict:
    """:func:`finetune` with the optimiser settings of a mitigator's config (``optimizer``,
    ``lr``, ``batch_size``, ``weight_decay``, ``momentum``, ``schedule``, ``normalise_loss``)."""
    return finetune(model, ds, task, optimizer=config.optimizer, lr=config.lr, epochs=epochs,
                    batch_size=config.batch_size, weight_decay=config.weight_decay,
                    momentum=config.momentum, schedule=config.schedule,
                    normalise_loss=config.normalise_loss, seed=seed, progress=progress,
                    desc=desc, after_step=after_step)


def prune_within_budget(error_of: Callable[[int], float], total: int, step_fraction: float,
                        max_fraction: float, err0: float, budget: float, *,
                        progress: bool = False, desc: str = "prune") -> tuple[int, list[dict]]:
    """The largest count (in steps of ``step_fraction``·total, up to ``max_fraction``·total)
    whose clean error ``error_of(count)`` stays within (1 + budget)·err0; the sweep stops at the
    first count over budget. Returns (count, [{"count", "error"}, ...])."""
    step = max(1, int(round(step_fraction * total)))
    limit = int(max_fraction * total)
    chosen, sweep = 0, []
    bar = progress_bar(total=limit // step, desc=desc, enabled=progress)
    for count in range(step, limit + 1, step):
        err = error_of(count)
        sweep.append({"count": count, "error": err})
        bar.update(1)
        if err > (1 + budget) * err0:
            break
        chosen = count
    bar.close()
    return chosen, sweep
