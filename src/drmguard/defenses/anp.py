"""Adversarial Neuron Pruning (ANP, Wu & Wang, NeurIPS 2021) with the regression loss.

A "neuron" is a BatchNorm channel. Every BatchNorm2d of (a copy of) the model becomes a noisy BN
whose affine part is γ⊙(m+δ), β⊙(1+ξ): m ∈ [0,1] a mask (init 1), δ, ξ ∈ [−ε, ε] adversarial
perturbations. Per iteration (official ``optimize_mask_cifar.py``): draw δ, ξ ~ U(−ε, ε), take
``anp_steps`` signed ascent steps of size ε/steps on the loss (no re-projection, as the
original), then one SGD step (lr 0.2, momentum 0.9) on the masks for
α·L(m) + (1−α)·L(m+δ, ξ), clamp m to [0,1]. The model stays in train() mode (BN batch
statistics) throughout, as the original; batches are drawn with replacement.
Here L is the task's L1 loss on the true labels of D_b.

Pruning (official ``prune_neuron_cifar.py``): neurons are sorted by mask value and pruned by
setting the BN weight γ_k = 0 (bias kept), on a fresh copy of the input model:
``prune="threshold"`` prunes every neuron with m ≤ 0.2; ``prune="budget"`` prunes in order of
increasing mask, in steps of ``budget_step`` of all neurons, as long as the clean error on a
held-out part of D_b stays within (1 + ``error_budget``)× the unpruned error.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import ArrayDataset
from ..errors import DrmguardError
from ..models.split import RegressionModel
from ..tasks import Task
from ..utils import progress_bar, seed_everything
from . import _common as C
from .base import Defence


@dataclass
class ANPConfig:
    eps: float = 0.4  # perturbation budget ε on δ and ξ
    anp_steps: int = 1
    alpha: float = 0.2  # weight of the natural loss
    lr: float = 0.2  # mask SGD
    momentum: float = 0.9
    iterations: int = 2000
    batch_size: int = 128
    prune: str = "threshold"  # threshold | budget
    threshold: float = 0.2
    error_budget: float = 0.10  # budget rule: relative clean-error increase allowed
    budget_step: float = 0.01  # budget rule: fraction of all neurons pruned per step
    max_prune_fraction: float = 0.9  # budget rule: never prune more than this
    holdout_fraction: float = 0.2  # part of D_b held out (budget rule, clean errors in info)
    normalise_loss: bool = True  # L1 per component divided by the benign label std
    device: str = "auto"

    def __post_init__(self):
        C.check(self.prune in ("threshold", "budget"),
                f"ANP prune must be 'threshold' or 'budget', got '{self.prune}'")
        C.check(self.eps >= 0 and self.anp_steps >= 1, "ANP eps must be >= 0, anp_steps >= 1")
        C.check(0 <= self.alpha <= 1, "ANP alpha must be in [0, 1]")
        C.check(self.iterations >= 1 and self.batch_size >= 2,
                "ANP iterations must be >= 1 and batch_size >= 2")
        C.check(0 < self.budget_step <= 1 and 0 < self.max_prune_fraction <= 1,
                "budget_step and max_prune_fraction must be in (0, 1]")


class NoisyBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with a per-channel mask and (optionally active) multiplicative noise."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=bn.weight.device if bn.affine else None)
        if not bn.affine:
            raise DrmguardError("ANP needs BatchNorm layers with affine weights")
        self.load_state_dict(bn.state_dict())
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        n, dev = bn.num_features, self.weight.device
        self.neuron_mask = nn.Parameter(torch.ones(n, device=dev))
        self.neuron_noise = nn.Parameter(torch.zeros(n, device=dev))
        self.neuron_noise_bias = nn.Parameter(torch.zeros(n, device=dev))
        self.perturbed = False

    def reset_noise(self, eps: float, generator: torch.Generator) -> None:
        with torch.no_grad():
            for p in (self.neuron_noise, self.neuron_noise_bias):
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1).mul_(eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perturbed:
            w = self.weight * (self.neuron_mask + self.neuron_noise)
            b = self.bias * (1 + self.neuron_noise_bias)
        else:
            w, b = self.weight * self.neuron_mask, self.bias
        use_batch = self.training or not self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean, self.running_var, w, b, use_batch, momentum,
                            self.eps)


def bn_layers(net: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    return [(n, m) for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]


def optimise_masks(model: RegressionModel, ds: ArrayDataset, task: Task, cfg: ANPConfig,
                   seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """ANP's mask optimisation on a copy of ``model``; returns {BN layer name: mask values}."""
    device = next(model.parameters()).device
    g = seed_everything(seed)
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.requires_grad_(False)
    noisy: dict[str, NoisyBatchNorm2d] = {}
    for name, bn in bn_layers(work.net):
        noisy[name] = NoisyBatchNorm2d(bn)
        work.net.set_submodule(name, noisy[name])
    masks = [m.neuron_mask for m in noisy.values()]
    noises = [p for m in noisy.values() for p in (m.neuron_noise, m.neuron_noise_bias)]
    mask_opt = torch.optim.SGD(masks, lr=cfg.lr, momentum=cfg.momentum)
    noise_opt = torch.optim.SGD(noises, lr=cfg.eps / cfg.anp_steps)
    x_all, y_all = ds.tensors()
    scale = C.label_stats(ds)[1].to(device) if cfg.normalise_loss else None

    def loss_of(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return C.scaled_l1(out, y, scale)

    def set_perturbed(flag: bool):
        for m in noisy.values():
            m.perturbed = flag

    work.train()
    bar = progress_bar(total=cfg.iterations, desc="ANP masks", enabled=progress)
    for _ in range(cfg.iterations):
        idx = torch.randint(0, len(ds), (cfg.batch_size,), generator=g)
        x, y = x_all[idx].to(device), y_all[idx].to(device)
        if cfg.eps > 0:
            for m in noisy.values():
                m.reset_noise(cfg.eps, g)
            set_perturbed(True)
            for _ in range(cfg.anp_steps):  # signed ascent on the loss
                noise_opt.zero_grad(set_to_none=True)
                (-loss_of(work(x), y)).backward()
                for p in noises:
                    p.grad = torch.sign(p.grad)
                noise_opt.step()
        mask_opt.zero_grad(set_to_none=True)
        loss_rob = loss_of(work(x), y) if cfg.eps > 0 else torch.zeros((), device=device)
        set_perturbed(False)
        loss_nat = loss_of(work(x), y)
        loss = cfg.alpha * loss_nat + (1 - cfg.alpha) * loss_rob
        loss.backward()
        mask_opt.step()
        with torch.no_grad():
            for m in masks:
                m.clamp_(0, 1)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    bar.close()
    return {name: m.neuron_mask.detach().cpu().numpy().copy() for name, m in noisy.items()}


def prune(model: RegressionModel, neurons: list[tuple[str, int]]) -> RegressionModel:
    """A copy of ``model`` with BN weight γ = 0 for every (layer, channel) in ``neurons``."""
    out = copy.deepcopy(model)
    layers = dict(bn_layers(out.net))
    with torch.no_grad():
        for name, k in neurons:
            layers[name].weight[k] = 0.0
    return out.eval()


class ANPMitigator(Defence):
    name, title, config_class = "anp", "ANP", ANPConfig
    profile_defaults = {"tiny": dict(iterations=40, batch_size=32),
                        "cpu": dict(iterations=200, batch_size=64),
                        "paper": dict(iterations=2000, batch_size=128)}
    min_samples = 4

    def _mitigate(self, model: RegressionModel, benign: ArrayDataset, task: Task, cfg, seed,
                  progress, prior) -> tuple[RegressionModel, dict]:
        t0 = time.perf_counter()
        base = self.working_copy(model, cfg).eval()
        if not bn_layers(base.net):
            raise DrmguardError("ANP needs BatchNorm2d layers in the model (none found)")
        fit, hold = C.holdout_split(benign, cfg.holdout_fraction, seed)
        masks = optimise_masks(base, fit, task, cfg, seed=seed, progress=progress)
        order = sorted(((float(v), name, k) for name, vals in masks.items()
                        for k, v in enumerate(vals)), key=lambda t: (t[0], t[1], t[2]))
        total = len(order)
        eval_set = hold if hold is not None else fit
        err0 = C.clean_error(base, eval_set, task)
        if cfg.prune == "threshold":
            chosen = [(n, k) for v, n, k in order if v <= cfg.threshold]
            sweep = []
        else:
            def neurons(count: int) -> list[tuple[str, int]]:
                return [(n, k) for _, n, k in order[:count]]

            count, sweep = C.prune_within_budget(
                lambda c: C.clean_error(prune(base, neurons(c)), eval_set, task), total,
                cfg.budget_step, cfg.max_prune_fraction, err0, cfg.error_budget,
                progress=progress, desc="ANP prune")
            chosen = neurons(count)
        pruned = prune(base, chosen)
        err1 = C.clean_error(pruned, eval_set, task)
        info = {
            "defense": self.name, "rule": cfg.prune, "n_neurons": total, "n_pruned": len(chosen),
            "pruned": [[n, int(k)] for n, k in chosen],
            "masks": {n: [round(float(v), 5) for v in vals] for n, vals in masks.items()},
            "threshold": cfg.threshold if cfg.prune == "threshold" else
            (float(order[len(chosen) - 1][0]) if chosen else None),
            "budget_sweep": sweep, "clean_error_before": err0, "clean_error_after": err1,
            "clean_error_on": "held-out part of D_b" if hold is not None else "D_b",
            "n_fit": len(fit), "n_holdout": 0 if hold is None else len(hold),
            "seconds": time.perf_counter() - t0, "config": asdict(cfg)}
        return pruned.cpu(), info


def make_config(profile: str = "cpu", task: str = "gaze", **overrides) -> ANPConfig:
    return ANPMitigator.resolve(profile, task, **overrides)


def make_mitigator(profile: str = "cpu", task: str = "gaze", **overrides) -> ANPMitigator:
    return ANPMitigator(profile, task, **overrides)
