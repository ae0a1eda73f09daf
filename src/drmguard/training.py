"""Training and evaluation of regression models (benign, or with an attack's hooks).

``fit`` trains with Adam and the task's L1 loss over an in-memory dataset. Attacks plug in
through two hooks: ``batch_fn(x, y, generator) -> (x, y)`` rewrites each batch (per-batch
poisoning such as WaNet's noise mode), and ``loss_fn(model, x, y) -> loss`` replaces the loss
(custom objectives such as the adaptive attack).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .data.base import ArrayDataset
from .errors import DrmguardError
from .models.split import RegressionModel
from .tasks import Task
from .utils import progress_bar, resolve_device, seed_everything

BatchFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[RegressionModel, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainConfig:
    epochs: int = 15
    steps: int | None = None  # overrides epochs when set (the paper counts steps)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | step | none
    milestones: tuple[float, ...] = (0.5, 0.9)  # step schedule, as fractions of all steps
    gamma: float = 0.1
    augment: bool = False  # label-safe photometric jitter (brightness, contrast, noise)
    device: str = "auto"
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def total_steps(self, n: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        return int(self.epochs) * max(1, math.ceil(n / self.batch_size))


def batches(ds: ArrayDataset, batch_size: int, generator: torch.Generator | None = None,
            shuffle: bool = True, drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches (float images in [0,1], targets) straight from the uint8 arrays."""
    n = len(ds)
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        yield ds.tensors(np.sort(order[i:i + batch_size]) if not shuffle else order[i:i + batch_size])


def photometric_jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Label-safe augmentation: per-image brightness/contrast change and mild noise."""
    b = x.shape[0]
    gain = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    bias = 0.1 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    noise = 0.01 * torch.randn(x.shape, generator=g)
    return (x * gain + bias + noise).clamp_(0, 1)


def _scheduler(opt, cfg: TrainConfig, total: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))
    if cfg.schedule == "step":
        ms = sorted({max(1, int(f * total)) for f in cfg.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, ms, cfg.gamma)
    if cfg.schedule == "none":
        return None
    raise DrmguardError(f"unknown LR schedule '{cfg.schedule}' (cosine, step or none)")


def fit(model: RegressionModel, train_set: ArrayDataset, task: Task, cfg: TrainConfig,
        batch_fn: BatchFn | None = None, loss_fn: LossFn | None = None,
        progress: bool = True, desc: str = "train", params=None, *,
        optimizer: str = "adam", momentum: float = 0.9, min_batch: int = 1,
        after_step: Callable[[], None] | None = None, losses: list | None = None) -> dict:
    """Train ``model`` in place; returns a small history (losses, wall time).

    The one training loop: training, the attacks' poisoned training, DRMGuard's mitigation and
    the fine-tuning baselines (:func:`drmguard.defenses._common.finetune`). ``optimizer``:
    ``adam`` or ``sgd`` (with ``momentum``); a batch smaller than ``min_batch`` counts as a
    step without an update (BatchNorm needs two samples in train mode); ``after_step`` runs
    after each update; each update's loss is appended to ``losses`` when given."""
    if len(train_set) == 0:
        raise DrmguardError("the training set is empty")
    if train_set.target_dim != model.num_outputs:
        raise DrmguardError(f"targets have {train_set.target_dim} values but the model "
                            f"outputs {model.num_outputs}")
    device = resolve_device(cfg.device)
    g = seed_everything(cfg.seed)
    model.to(device).train()
    params = model.parameters() if params is None else params
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=momentum,
                              weight_decay=cfg.weight_decay)
    else:
        raise DrmguardError(f"unknown optimizer '{optimizer}' (adam or sgd)")
    total = cfg.total_steps(len(train_set))
    sched = _scheduler(opt, cfg, total)
    losses = [] if losses is None else losses
    start, step, t0 = len(losses), 0, time.perf_counter()
    bar = progress_bar(total=total, desc=desc, enabled=progress)
    while step < total:
        for x, y in batches(train_set, cfg.batch_size, g):
            if len(x) < min_batch:
                step += 1
                if step >= total:
                    break
                continue
            if batch_fn is not None:
                x, y = batch_fn(x, y, g)
            if cfg.augment:
                x = photometric_jitter(x, g)
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model, x, y) if loss_fn is not None else task.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if after_step is not None:
                after_step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if step >= total:
                break
    bar.close()
    model.eval()
    mine = losses[start:]
    return {"steps": total, "final_loss": float(np.mean(mine[-20:])) if mine else None,
            "seconds": time.perf_counter() - t0}


@torch.no_grad()
def predict(model: RegressionModel, x: torch.Tensor | ArrayDataset, batch_size: int = 256,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Model outputs (on CPU) for a float image tensor or a dataset, optionally after a trigger."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    src = batches(x, batch_size, shuffle=False) if isinstance(x, ArrayDataset) else \
        ((x[i:i + batch_size], None) for i in range(0, len(x), batch_size))
    for xb, _ in src:
        if transform is not None:
            xb = transform(xb)
        outs.append(model(xb.to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0, model.num_outputs)


def evaluate(model: RegressionModel, ds: ArrayDataset, task: Task, batch_size: int = 256) -> dict:
    """Mean regression error on ``ds`` and per-component mean absolute errors."""
    if len(ds) == 0:
        raise DrmguardError("the evaluation set is empty")
    pred = predict(model, ds, batch_size)
    y = torch.from_numpy(ds.targets)
    err = task.error(pred, y)
    comp = task.component_errors(pred, y).mean(0)
    return {"error": float(err.mean()), "error_units": task.error_units, "n": len(ds),
            "per_component": {n: float(v) for n, v in zip(task.target_names, comp)}}


def mean_predictor_error(train_set: ArrayDataset, test_set: ArrayDataset, task: Task) -> float:
    """Error of always predicting the training-label mean (the floor a model must beat)."""
    mean = torch.from_numpy(train_set.targets).mean(0, keepdim=True)
    y = torch.from_numpy(test_set.targets)
    return float(task.error(mean.expand_as(y), y).mean())


def train_regressor(train_set: ArrayDataset, task: Task, arch: str, cfg: TrainConfig,
                    arch_kwargs: dict | None = None, progress: bool = True,
                    batch_fn: BatchFn | None = None, loss_fn: LossFn | None = None,
                    desc: str = "train") -> tuple[RegressionModel, dict]:
    """Build ``arch`` for ``train_set``'s shape, train it, and return (model, metadata)."""
    from .models.io import model_meta
    from .models.registry import build_model

    seed_everything(cfg.seed)
    net = build_model(arch, task.dim, train_set.channels, **(arch_kwargs or {}))
    c = train_set.channels
    model = RegressionModel(net, train_set.image_size, c, mean=[0.5] * c, std=[0.25] * c)
    history = fit(model, train_set, task, cfg, batch_fn=batch_fn, loss_fn=loss_fn,
                  progress=progress, desc=desc)
    meta = model_meta(model, arch, task, arch_kwargs, training=cfg.to_dict(), seed=cfg.seed,
                      history=history, n_train=len(train_set))
    return model.cpu(), meta
