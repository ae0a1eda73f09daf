"""Neural Cleanse generalised to regression (NC-R).

Original (Wang et al., S&P 2019): for every class t, find the smallest mask m and pattern p such
that x' = (1−m)⊙x + m⊙p sends clean inputs to t; an abnormally small ‖m‖₁ reveals a backdoor.

Regression version (DRMGuard, Appendix A.4): the target vector y_t ∈ R^K is an optimisation
variable next to m and p,

    min_{m, p, y_t}  (1/N) Σ ℓ(F((1−m)⊙x + m⊙p), y_t) + λ ‖m‖₁,

with NC's own λ schedule and early stop. "Attack success" of a sample is an output within τ of
y_t (5° for gaze and head pose). The score is −‖m‖₁ of the smallest successful mask (small mask ⇒
backdoored); the decision is ‖m‖₁ < ``mask_fraction_threshold``·H·W.

``variant="grid"`` is the enumeration analogue of the original per-class loop: y_t is fixed in
turn to every point of a grid over the benign label range, one mask is reverse-engineered per
candidate, and the MAD anomaly index of the smallest norm decides (index > 2 ⇒ backdoored).

``variant="classes"`` is the original itself, for classifiers (task ``classification``): for
every class t, min_{m, p} (1/N) Σ CE(F((1−m)⊙x + m⊙p), t) + λ‖m‖₁ with the official λ schedule
and early stop; success = classified as t; the MAD anomaly index (consistency constant 1.4826)
of the smallest ‖m‖₁ over the K classes decides (index > 2 ⇒ backdoored) and names the target
class. It is the default for classification tasks and refused for regression ones.

Differences from the original, all options: the loss is L1 divided per component by the benign
label std (``normalise_loss``) so that ``init_cost`` means the same for every task; y_t lives in
label-std units (y_t = μ + σ⊙u, Adam on u); masks that never reached the success threshold count
as the full image (‖m‖₁ = H·W).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.base import ArrayDataset
from ..models.split import RegressionModel
from ..tasks import Task
from ..training import batches
from ..utils import progress_bar, seed_everything
from . import _common as C
from .base import Defence, Detection

_EPS = 1e-7


@dataclass
class NeuralCleanseConfig:
    # optimise (y_t a variable, the default) | grid (enumerate y_t) | classes (classifiers:
    # the original, one reverse-engineering per class)
    variant: str = "optimise"
    epochs: int = 60  # NC "steps": passes over the benign samples
    batch_size: int = 32
    max_samples: int | None = 500  # benign samples used (seeded subsample), None = all
    lr: float = 0.1  # Adam (betas 0.5, 0.9) on the tanh parameters of mask and pattern
    target_lr: float = 0.1  # Adam on y_t, in label-std units
    init: str = "random"  # random (official) | ones (PyTorch port, BackdoorBench)
    init_cost: float = 1e-3
    reset_cost_to_zero: bool = True  # official: start at λ = 0, set init_cost once successful
    cost_multiplier_up: float = 2.0
    cost_multiplier_down: float = 2.0 ** 1.5
    patience: int = 5
    success_threshold: float = 0.99  # fraction of outputs within τ of y_t
    # "attack success" tolerance in the task's error units: an output within it of y_t counts
    # as at the target (None: 5° for gaze and head pose, 0.25·label std for generic). Not
    # DRMGuard's τ; spelt ``tau`` before, which is still accepted and is the key it is stored
    # under in cache keys and result records.
    success_tolerance: float | None = None
    normalise_loss: bool = True  # divide the L1 loss per component by the label std
    early_stop: bool = True
    early_stop_threshold: float = 0.99
    early_stop_patience: int = 25
    mask_fraction_threshold: float = 0.05  # optimise variant: backdoored iff ‖m‖₁ < this·H·W
    # grid variant
    grid_size: int = 5  # points per output component
    grid_percentiles: tuple[float, float] = (5.0, 95.0)  # grid range over the benign labels
    candidates: list | None = None  # explicit candidate targets (N×K), replacing the grid
    grid_epochs: int = 12  # epochs per candidate target
    anomaly_threshold: float = 2.0  # MAD anomaly index above which the model is flagged
    class_epochs: int = 40  # classes variant: epochs per class
    device: str = "auto"

    def __post_init__(self):
        C.check(self.variant in ("optimise", "grid", "classes"),
                f"NC variant must be 'optimise', 'grid' or 'classes', got '{self.variant}'")
        C.check(self.class_epochs >= 1, "NC class_epochs must be >= 1")
        C.check(self.init in ("random", "ones"),
                f"NC init must be 'random' or 'ones', got '{self.init}'")
        C.check(self.epochs >= 1 and self.grid_epochs >= 1, "NC epochs must be >= 1")
        C.check(self.batch_size >= 1, "NC batch_size must be >= 1")
        C.check(0 < self.success_threshold <= 1, "success_threshold must be in (0, 1]")
        C.check(self.grid_size >= 2, "grid_size must be >= 2")
        C.check(self.patience >= 1, "patience must be >= 1")
        self.grid_percentiles = tuple(float(v) for v in self.grid_percentiles)


@dataclass
class ReverseResult:
    """One reverse-engineering run (one candidate target, or y_t optimised)."""

    mask: np.ndarray  # H×W in [0,1] (best successful one, else the last one)
    pattern: np.ndarray  # C×H×W in [0,1]
    target: list[float]  # y_t of that solution
    found: bool  # reached the success threshold at least once
    mask_l1: float  # ‖m‖₁ of the best successful mask (H·W when none)
    success: float  # success rate of the epoch that produced it
    epochs_run: int
    final_cost: float
    history: dict = field(default_factory=dict)


def _to_tanh(v: torch.Tensor) -> torch.Tensor:
    return torch.atanh(((v - 0.5) * (2 + _EPS)).clamp(-1 + 1e-6, 1 - 1e-6))


def _from_tanh(t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(t) / (2 + _EPS) + 0.5


def reverse_engineer(model: RegressionModel, benign: ArrayDataset, task: Task,
                     cfg: NeuralCleanseConfig, target: torch.Tensor | None = None,
                     epochs: int | None = None, seed: int = 0, progress: bool = True,
                     desc: str = "NC-R") -> ReverseResult:
    """Reverse-engineer (m, p[, y_t]) on ``benign``; y_t is optimised unless ``target`` is given.

    ``model`` should already be a frozen copy on the right device (see :func:`detect`).
    """
    device = next(model.parameters()).device
    g = seed_everything(seed)
    c, (h, w) = model.in_channels, model.input_size
    mu, sd = C.label_stats(benign)
    classify = task.is_classification  # the original: CE to the class, success = argmax
    if classify and target is None:
        raise C.DrmguardError("NC on a classifier reverse-engineers one given class at a time")
    target_class = int(target.argmax()) if classify else None
    tau = None if classify else C.success_tolerance(task, benign, cfg.success_tolerance)
    scale = sd.to(device) if cfg.normalise_loss and not classify else None
    if cfg.init == "random":
        m0, p0 = torch.rand(1, 1, h, w, generator=g), torch.rand(1, c, h, w, generator=g)
    else:
        m0, p0 = torch.ones(1, 1, h, w), torch.ones(1, c, h, w)
    theta_m = _to_tanh(m0).to(device).requires_grad_(True)
    theta_p = _to_tanh(p0).to(device).requires_grad_(True)
    groups = [{"params": [theta_m, theta_p], "lr": cfg.lr}]
    yt = C.TargetVector(mu, sd, target).to(device)
    if target is None:
        groups.append({"params": list(yt.parameters()), "lr": cfg.target_lr})
    else:
        yt.u.requires_grad_(False)
    opt = torch.optim.Adam(groups, betas=(0.5, 0.9))

    cost = 0.0 if cfg.reset_cost_to_zero else cfg.init_cost
    cost_set = up = down = 0
    up_flag = down_flag = False
    best = math.inf
    best_state = None
    es_counter, es_best = 0, math.inf
    hist = {"cost": [], "success": [], "mask_l1": [], "loss": [], "target": []}
    n_epochs = int(epochs or cfg.epochs)
    bar = progress_bar(total=n_epochs, desc=desc, enabled=progress)
    epoch = 0
    for epoch in range(1, n_epochs + 1):
        succ, regs, losses, n = 0.0, [], [], 0
        for x, _ in batches(benign, cfg.batch_size, g):
            x = x.to(device)
            m, p = _from_tanh(theta_m), _from_tanh(theta_p)
            out = model((1 - m) * x + m * p)
            y = yt()
            if classify:
                cls = torch.full((len(x),), target_class, dtype=torch.long, device=device)
                loss_task = torch.nn.functional.cross_entropy(out, cls)
            else:
                loss_task = C.scaled_l1(out, y.detach() if target is not None else y, scale)
            reg = m.abs().sum()
            loss = loss_task + cost * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            succ += float((out.detach().argmax(1) == target_class).sum()) if classify else \
                float(C.hits(task, out.detach(), y.detach(), tau).sum())
            n += len(x)
            regs.append(float(reg.detach()))
            losses.append(float(loss_task.detach()))
        avg_succ, avg_reg = succ / n, float(np.mean(regs))
        for k, v in (("cost", cost), ("success", avg_succ), ("mask_l1", avg_reg),
                     ("loss", float(np.mean(losses))), ("target", yt.value())):
            hist[k].append(v)
        if avg_succ >= cfg.success_threshold and avg_reg < best:
            best = avg_reg
            best_state = (_from_tanh(theta_m).detach().clone(),
                          _from_tanh(theta_p).detach().clone(), yt.value(), avg_succ)
        # λ schedule (official): first switch λ on, then adapt it.
        if cost == 0 and avg_succ >= cfg.success_threshold:
            cost_set += 1
            if cost_set >= cfg.patience:
                cost, up, down, up_flag, down_flag = cfg.init_cost, 0, 0, False, False
        else:
            cost_set = 0
        if avg_succ >= cfg.success_threshold:
            up, down = up + 1, 0
        else:
            up, down = 0, down + 1
        if up >= cfg.patience:
            up, cost, up_flag = 0, cost * cfg.cost_multiplier_up, True
        elif down >= cfg.patience:
            down, cost, down_flag = 0, cost / cfg.cost_multiplier_down, True
        bar.update(1)
        bar.set_postfix(succ=f"{avg_succ:.2f}", l1=f"{avg_reg:.1f}", cost=f"{cost:.1e}")
        if cfg.early_stop:
            if best < math.inf:
                es_counter = es_counter + 1 if best >= cfg.early_stop_threshold * es_best else 0
            es_best = min(best, es_best)
            if up_flag and down_flag and es_counter >= cfg.early_stop_patience:
                break
    bar.close()
    if best_state is None:
        m, p = _from_tanh(theta_m).detach(), _from_tanh(theta_p).detach()
        best_state = (m, p, yt.value(), hist["success"][-1])
    m, p, y_best, s_best = best_state
    found = best < math.inf
    return ReverseResult(mask=m[0, 0].cpu().numpy(), pattern=p[0].cpu().numpy(), target=y_best,
                         found=found, mask_l1=float(m.sum()) if found else float(h * w),
                         success=float(s_best), epochs_run=epoch, final_cost=float(cost),
                         history=hist)


def mad_anomaly(norms: np.ndarray) -> tuple[float, float, float]:
    """(anomaly index of the smallest norm, median, MAD) with the 1.4826 consistency constant."""
    med = float(np.median(norms))
    mad = 1.4826 * float(np.median(np.abs(norms - med)))
    low = float(norms.min())
    if mad == 0:
        return (math.inf if low < med else 0.0), med, mad
    return abs(low - med) / mad, med, mad


def _outliers(results, threshold: float):
    """(mask norms, anomaly index, median, MAD, index of the smallest norm, the candidates whose
    norm lies more than ``threshold`` MADs below the median) over reverse-engineered masks."""
    norms = np.array([r.mask_l1 for r in results])
    index, med, mad = mad_anomaly(norms)
    flagged = [i for i, v in enumerate(norms)
               if v < med and (mad == 0 or abs(v - med) / mad > threshold)]
    return norms, index, med, mad, int(norms.argmin()), flagged


def candidate_grid(benign: ArrayDataset, cfg: NeuralCleanseConfig) -> np.ndarray:
    """Candidate target vectors: ``cfg.candidates`` when given, else a regular grid over the
    benign label percentiles (G^K × K)."""
    if cfg.candidates is not None:
        cands = np.asarray(cfg.candidates, dtype=np.float32)
        C.check(cands.ndim == 2 and cands.shape[1] == benign.target_dim and len(cands) >= 3,
                f"candidates must be at least 3 target vectors of {benign.target_dim} values")
        return cands
    lo, hi = np.percentile(benign.targets, cfg.grid_percentiles, axis=0)
    axes = [np.linspace(a, b, cfg.grid_size) for a, b in zip(lo, hi)]
    return np.array(list(itertools.product(*axes)), dtype=np.float32)


def _centroid(mask: np.ndarray) -> list[float]:
    tot = float(mask.sum())
    if tot <= 0:
        return [float("nan"), float("nan")]
    rows, cols = np.indices(mask.shape)
    return [float((rows * mask).sum() / tot / (mask.shape[0] - 1 or 1)),
            float((cols * mask).sum() / tot / (mask.shape[1] - 1 or 1))]


class NeuralCleanseR(Defence):
    """The NC-R detector. ``Detection.result`` holds the reversed mask and pattern (a
    :class:`ReverseResult`; the list of them for the grid variant)."""

    name, title, config_class = "nc", "Neural Cleanse", NeuralCleanseConfig
    profile_defaults = {
        "tiny": dict(epochs=8, max_samples=64, batch_size=32, patience=2, early_stop_patience=6,
                     grid_size=3, grid_epochs=3),
        "cpu": dict(epochs=60, max_samples=320, batch_size=32, grid_size=5, grid_epochs=12),
        "paper": dict(epochs=80, max_samples=None, batch_size=32, grid_size=5, grid_epochs=40),
    }
    task_defaults = {"headpose": dict(grid_size=3),  # 3 outputs: a grid of 3^3 = 27 points
                     "classification": dict(variant="classes")}
    profile_task_defaults = {
        ("tiny", "classification"): dict(class_epochs=4, max_samples=64, patience=1,
                                         early_stop_patience=3),
        # D_b of the digits is 180 images: all used; patience 3 so that the λ schedule acts
        # within the 40 epochs per class (10 classes: ~2,400 small steps)
        ("cpu", "classification"): dict(class_epochs=40, max_samples=None, patience=3,
                                        early_stop_patience=15),
        ("paper", "classification"): dict(class_epochs=80, max_samples=None),
    }
    supports_classification = True  # variant "classes": the original
    option_aliases = {"tau": "success_tolerance"}
    stored_names = {"success_tolerance": "tau"}

    def _detect(self, model: RegressionModel, benign: ArrayDataset, task: Task, cfg, seed,
                progress) -> Detection:
        t0 = time.perf_counter()
        frozen = self.working_copy(model, cfg, frozen=True)
        data = C.subsample(benign, cfg.max_samples, seed)
        h, w = model.input_size
        C.check(task.is_classification == (cfg.variant == "classes"),
                f"NC's variant 'classes' (the original, per class) is for classifiers and "
                f"classifiers need it; got variant '{cfg.variant}' on task {task.name}")
        if task.is_classification:
            return self._detect_classes(frozen, data, task, cfg, seed, progress, t0)
        tau = C.success_tolerance(task, benign, cfg.success_tolerance)
        common = {"variant": cfg.variant, "tau": tau, "success_tolerance": tau,
                  "n_samples": len(data), "config": self.config_dict(cfg)}
        if cfg.variant == "optimise":
            res = reverse_engineer(frozen, data, task, cfg, seed=seed, progress=progress)
            thr = cfg.mask_fraction_threshold * h * w
            details = {**common, "mask_l1": res.mask_l1, "mask_fraction": res.mask_l1 / (h * w),
                       "found": res.found, "success_at_best": res.success,
                       "epochs_run": res.epochs_run, "final_cost": res.final_cost,
                       "mask_centroid": _centroid(res.mask),
                       "target_final": res.history["target"][-1],
                       "history": {k: v for k, v in res.history.items() if k != "target"}}
            return Detection(defense=self.name, backdoored=bool(res.found and res.mask_l1 < thr),
                             score=-res.mask_l1, threshold=-thr, target_estimate=res.target,
                             seconds=time.perf_counter() - t0, details=details, result=res)
        cands = candidate_grid(data, cfg)
        results = []
        bar = progress_bar(total=len(cands), desc="NC-R grid", enabled=progress)
        for i, cand in enumerate(cands):
            results.append(reverse_engineer(frozen, data, task, cfg, target=torch.from_numpy(cand),
                                            epochs=cfg.grid_epochs, seed=seed + i, progress=False))
            bar.update(1)
        bar.close()
        norms, index, med, mad, best, flagged = _outliers(results, cfg.anomaly_threshold)
        details = {**common, "candidates": cands.tolist(), "mask_l1": norms.tolist(),
                   "found": [r.found for r in results], "median": med, "mad": mad,
                   "anomaly_index": index, "flagged": flagged,
                   "min_mask_l1": float(norms[best]),
                   "mask_centroid": _centroid(results[best].mask)}
        return Detection(defense=self.name, backdoored=bool(index > cfg.anomaly_threshold and
                                                            norms[best] < med),
                         score=float(index), threshold=cfg.anomaly_threshold,
                         target_estimate=[float(v) for v in cands[best]],
                         seconds=time.perf_counter() - t0, details=details, result=results)


    def _detect_classes(self, frozen, data, task, cfg, seed, progress, t0) -> Detection:
        """The original Neural Cleanse: one mask per class, MAD over the K mask norms."""
        results = []
        bar = progress_bar(total=task.dim, desc="NC classes", enabled=progress)
        for k in range(task.dim):
            results.append(reverse_engineer(frozen, data, task, cfg,
                                            target=torch.eye(task.dim)[k],
                                            epochs=cfg.class_epochs, seed=seed + k,
                                            progress=False, desc=f"NC class {k}"))
            bar.update(1)
        bar.close()
        norms, index, med, mad, best, flagged = _outliers(results, cfg.anomaly_threshold)
        details = {"variant": cfg.variant, "n_samples": len(data),
                   "config": self.config_dict(cfg), "classes": list(task.target_names),
                   "mask_l1": norms.tolist(), "found": [r.found for r in results],
                   "epochs_run": [r.epochs_run for r in results], "median": med, "mad": mad,
                   "anomaly_index": index, "flagged": flagged, "target_class": best,
                   "min_mask_l1": float(norms[best]),
                   "mask_centroid": _centroid(results[best].mask)}
        return Detection(defense=self.name, backdoored=bool(index > cfg.anomaly_threshold and
                                                            norms[best] < med),
                         score=float(min(index, 1e6)) if norms[best] < med else
                         -float(min(index, 1e6)), threshold=cfg.anomaly_threshold,
                         target_estimate=[float(v) for v in np.eye(task.dim)[best]],
                         seconds=time.perf_counter() - t0, details=details, result=results)


def make_config(profile: str = "cpu", task: str = "gaze", **overrides) -> NeuralCleanseConfig:
    return NeuralCleanseR.resolve(profile, task, **overrides)


def make_detector(profile: str = "cpu", task: str = "gaze", **overrides) -> NeuralCleanseR:
    return NeuralCleanseR(profile, task, **overrides)
