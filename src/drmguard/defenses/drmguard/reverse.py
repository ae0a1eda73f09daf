"""Reverse engineering of the trigger function (Eq. 5 with the momentum reverse trigger).

    L(θ) = λ1 · (1/K) Σ_k Var_i[F_k(x̃_i)]  (÷ Var_i[F_k(x_i)] when ``scale_free``)
         + (1/N) Σ_i ‖G_θ(x_i) − x_i‖_1     (or ‖x̃_i − x_i‖_1; per-pixel mean or sum over C×H×W)
         + λ3 · r_f,   r_f = RAV(x̃ batch vs benign batch) = (1/K) Σ_k Var_i[θ_k(x̃_i)] / Var_i[θ_k(x_i)]

with x̃ = M ⊙ x + (1 − M) ⊙ G_θ(x) (see :mod:`.mtr`) and θ_k the angle between the feature
vector h = F1(·) and the k-th row of the head's weight W. Variances are population variances
over the batch. Only G's parameters are optimised (Adam); the model is frozen and in eval mode.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ...data.base import float_images
from ...errors import DrmguardError
from ...utils import progress_bar, seed_everything
from . import mtr as mtr_mod
from .generator import TriggerGenerator, build_generator, pretrain_identity, recalibrate_batchnorm

_EPS = 1e-12
_ACOS_MARGIN = 1e-6


# --- the three terms --------------------------------------------------------------------------
def output_variance(y: torch.Tensor) -> torch.Tensor:
    """Per-component population variance over the batch, shape (K,)."""
    return y.var(0, unbiased=False)


def output_term(y: torch.Tensor, benign_var: torch.Tensor | None = None) -> torch.Tensor:
    """(1/K) Σ_k Var_i[y_ik], or the mean of Var ratios to ``benign_var`` (scale-free)."""
    v = output_variance(y)
    if benign_var is not None:
        v = v / benign_var.clamp_min(_EPS)
    return v.mean()


def input_l1(diff: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """(1/N) Σ_i ‖diff_i‖_1 with the norm as the per-pixel mean (``mean``) or the sum (``sum``)."""
    per_image = diff.abs().flatten(1)
    per_image = per_image.mean(1) if reduction == "mean" else per_image.sum(1)
    return per_image.mean()


def feature_angles(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """θ_k(x) = arccos(W_k·h / (‖W_k‖ ‖h‖)) for a batch: B×m features, K×m weight -> B×K."""
    cos = (h @ weight.t()) / (h.norm(dim=1, keepdim=True) * weight.norm(dim=1)[None]
                              ).clamp_min(_EPS)
    return torch.acos(cos.clamp(-1 + _ACOS_MARGIN, 1 - _ACOS_MARGIN))


def angle_variance_ratio(theta: torch.Tensor, theta_ref: torch.Tensor,
                         aggregation: str = "mean_of_ratios") -> torch.Tensor:
    """RAV of ``theta`` (B×K) against ``theta_ref``: mean of per-component variance ratios, or
    the ratio of the summed variances."""
    v, v_ref = theta.var(0, unbiased=False), theta_ref.var(0, unbiased=False)
    if aggregation == "ratio_of_sums":
        return v.sum() / v_ref.sum().clamp_min(_EPS)
    return (v / v_ref.clamp_min(_EPS)).mean()


def l1_weight_at(step: int, cfg) -> float:
    """Weight of the input-space term at ``step``: ``cfg.l1_weight`` (1 in the paper), reached by
    a geometric ramp from ``l1_weight * l1_warmup_start`` over the first ``l1_warmup`` fraction
    of the steps when ``l1_warmup > 0`` [ours]: the search first explores with a cheap
    perturbation budget, then shrinks the perturbation to what the collapse really needs."""
    if cfg.l1_warmup <= 0:
        return cfg.l1_weight
    frac = min(1.0, step / max(1.0, cfg.l1_warmup * cfg.steps))
    return cfg.l1_weight * cfg.l1_warmup_start ** (1.0 - frac)


def objective(y_rev, h_rev, theta_ref, x, gx, xt, weight, cfg, benign_var=None,
              l1_weight: float | None = None):
    """Eq. 5 for one batch; returns (loss tensor, dict of the terms as floats).

    ``l1_weight`` overrides ``cfg.l1_weight`` (the warm-up schedule)."""
    out = output_term(y_rev, benign_var if cfg.scale_free else None)
    l1 = input_l1((gx if cfg.l1_on == "generator" else xt) - x, cfg.l1_reduction)
    rf = angle_variance_ratio(feature_angles(h_rev, weight), theta_ref, cfg.rav_aggregation)
    w2 = cfg.l1_weight if l1_weight is None else l1_weight
    loss = cfg.lambda1 * out + w2 * l1 + cfg.lambda3 * rf
    terms = {"loss": loss, "output": out, "l1": l1, "rf": rf}
    return loss, {k: float(v.detach()) for k, v in terms.items()}


# --- helpers ----------------------------------------------------------------------------------
@contextlib.contextmanager
def frozen(model: torch.nn.Module):
    """Eval mode and no parameter gradients for the duration; the original state is restored."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


class BenignImages:
    """D_b's images kept as uint8 (N×H×W×C, CPU); float batches on the device on demand, in
    ``memory_format`` (the scanned model's layout, :func:`drmguard.utils.device_layout`)."""

    def __init__(self, images: np.ndarray, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.u8 = torch.from_numpy(np.ascontiguousarray(images))
        self.device = device
        self.memory_format = memory_format

    def __len__(self) -> int:
        return len(self.u8)

    def get(self, idx) -> torch.Tensor:
        # a no-op for NCHW (float_images is already contiguous)
        return float_images(self.u8[idx].to(self.device)).contiguous(
            memory_format=self.memory_format)

    def chunks(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            yield slice(i, min(i + batch_size, len(self)))


class ReversedTrigger:
    """The reversed trigger function x -> x̃ = M ⊙ x + (1 − M) ⊙ G(x) (no gradients).

    With ``mtr_map='per_image'`` the weight of each new image is its own attention under
    ``attention_model`` (the scanned model, held by reference), its outputs divided by
    ``output_scale`` (the benign outputs' standard deviations of a scale-free scan).
    """

    def __init__(self, generator: TriggerGenerator, weight: torch.Tensor | None, cfg,
                 attention_model=None, output_scale: torch.Tensor | None = None):
        self.generator = generator.eval()
        self.weight = weight
        self.cfg = cfg
        self.attention_model = attention_model
        self.output_scale = output_scale

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def weight_for(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.cfg.mtr:
            return None
        if self.cfg.mtr_map == "per_image":
            dev = next(self.attention_model.parameters()).device
            with frozen(self.attention_model):
                a = mtr_mod.input_attention(self.attention_model, x.to(dev),
                                            self.output_scale).to(x.device)
            return mtr_mod.normalise_attention(a, self.cfg.mtr_norm, self.cfg.mtr_delta,
                                               self.cfg.mtr_percentile, self.cfg.mtr_clip)[:, None]
        return self.weight

    def generate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G(x), x̃) for a batch already on the generator's device."""
        w = self.weight_for(x)
        with torch.no_grad():
            base, gx = self.generator.with_warped(x)
            xt = gx if w is None else mtr_mod.blend(w.to(x.device), kept(x, base, self.cfg), gx)
        return gx, xt

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x̃ for images B×C×H×W in [0, 1], returned on the device of ``x``."""
        return self.generate(x.to(self.device))[1].to(x.device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything that defines the function, as named CPU tensors (for safetensors)."""
        out = {f"generator.{k}": v.detach().cpu().contiguous()
               for k, v in self.generator.state_dict().items()}
        if self.weight is not None:
            out["mtr_weight"] = self.weight.detach().cpu().contiguous()
        if self.output_scale is not None:
            out["output_scale"] = self.output_scale.detach().cpu().contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], cfg, channels: int,
                     size: tuple[int, int], attention_model=None) -> "ReversedTrigger":
        """Inverse of :meth:`tensors` (raises ``RuntimeError`` when they do not fit ``cfg``)."""
        gen = build_generator(cfg, channels, size)
        gen.load_state_dict({k.removeprefix("generator."): v for k, v in tensors.items()
                             if k.startswith("generator.")})
        return cls(gen, tensors.get("mtr_weight"), cfg, attention_model,
                   tensors.get("output_scale"))


@dataclass
class Search:
    """One reverse-engineering run (one restart)."""

    trigger: ReversedTrigger
    seed: int
    trajectory: list = field(default_factory=list)  # (step, [estimate])
    history: list = field(default_factory=list)  # (step, terms dict)
    pretrain_error: float | None = None
    r_floor: float = 0.0
    seconds: dict = field(default_factory=dict)
    checkpoints: list = field(default_factory=list)  # held-out evaluations (select != final)
    chosen_step: int | None = None  # the step whose generator is the trigger
    evaluation: dict | None = None  # the trigger's evaluation on all of D_b, if confirm made one


class Checkpoints:
    """The search's states evaluated on a held-out part of D_b, and the one the scan reports
    (``cfg.select``; see :class:`~.config.DRMGuardConfig`)."""

    def __init__(self, model, images: BenignImages, bench: dict, idx: torch.Tensor, cfg):
        self.model, self.cfg, self.idx = model, cfg, idx
        self.x = images.get(idx)
        self.y_ben, self.theta = bench["y"][idx], bench["theta"][idx]
        self.weight = model.head.weight.detach().float()
        # R's denominator over all of D_b, as in the final evaluation
        self.norm_max = max(float(images.get(sl).flatten(1).sum(1).max())
                            for sl in images.chunks(256))
        self.rows: list[dict] = []
        self.states: list[tuple[dict, torch.Tensor | None]] = []

    @torch.no_grad()
    def record(self, step: int, gen: TriggerGenerator, mtr_weight: torch.Tensor | None) -> None:
        """Evaluate ``gen`` as the search runs it (training mode: batch statistics; the running
        statistics it updates are recomputed for the chosen state) and keep a copy of it."""
        from .identify import collapse_ratio, r_score  # (identify imports this module)

        cfg, x = self.cfg, self.x
        base, gx = gen.with_warped(x)
        xt = gx if mtr_weight is None else mtr_mod.blend(mtr_weight, kept(x, base, cfg), gx)
        h, y = self.model.forward_with_features(xt)
        y = y.float()
        _, terms = objective(y, h.float(), self.theta, x, gx, xt, self.weight, cfg,
                             self.y_ben.var(0, unbiased=False))
        self.rows.append({
            "step": int(step),
            "R": r_score((xt - x).abs().flatten(1).sum(1), torch.tensor([self.norm_max])),
            "collapse_ratio": collapse_ratio(y, self.y_ben),
            "objective": terms["loss"], "output": terms["output"], "l1": terms["l1"],
            "rf": terms["rf"], "estimate": y.mean(0).cpu().tolist()})
        self.states.append(({k: t.detach().clone() for k, t in gen.state_dict().items()},
                            None if mtr_weight is None else mtr_weight.detach().clone()))

    def chosen(self) -> int:
        """Index of the checkpoint the scan reports (before confirmation; see ranked)."""
        return self.ranked()[0]

    def ranked(self) -> list[int]:
        """The checkpoints a scan may report, in order of preference: with ``cheapest_collapse``
        the collapsed ones by R (at most ``CONFIRM_TRIES``; the search confirms them on all of
        D_b in this order), else the one :func:`choose_state` picks."""
        states = [(r["R"], r["collapse_ratio"], r["objective"]) for r in self.rows]
        first, threshold = choose_state(states, self.cfg), self.cfg.collapse_threshold
        if self.cfg.select != "cheapest_collapse" or states[first][1] >= threshold:
            return [first]
        collapsed = [i for i, st in enumerate(states) if st[1] < threshold]
        return sorted(collapsed, key=lambda i: states[i][0])[:CONFIRM_TRIES]


# How many collapsed checkpoints a search tries, cheapest first, before it reports the cheapest
# one unconfirmed: the held-out part of D_b can call a state at the edge of the collapse
# threshold collapsed while all of D_b does not [ours].
CONFIRM_TRIES = 5


def choose_state(states: list[tuple[float, float, float]], cfg) -> int:
    """Index of the state a scan reports among (R, collapse ratio, objective) triples — the
    checkpoints of one search, or the restarts' final evaluations: the lowest objective; with
    ``select = cheapest_collapse`` the smallest R among the collapsed ones, if any."""
    idx = range(len(states))
    if cfg.select == "cheapest_collapse":
        collapsed = [i for i in idx if states[i][1] < cfg.collapse_threshold]
        if collapsed:
            return min(collapsed, key=lambda i: states[i][0])
    return min(idx, key=lambda i: states[i][2])


def split_holdout(n: int, cfg, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(indices the search trains on, held-out indices or None): all of D_b when the scan
    reports the final state, else a seeded ``cfg.holdout`` fraction held out (at least 2
    images each side)."""
    if cfg.select == "final":
        return torch.arange(n), None
    if n < 4:
        raise DrmguardError(f"selecting a checkpoint needs at least 4 benign images, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    n_hold = min(n - 2, max(2, round(cfg.holdout * n)))
    return perm[n_hold:].sort().values, perm[:n_hold].sort().values


def precompute_benign(model, images: BenignImages, cfg) -> dict:
    """Benign outputs, feature angles and MTR attention for every image of D_b (model frozen),
    and the outputs' scale: their standard deviations over D_b when ``cfg.scale_free`` (the unit
    of each output, by which the MTR attention divides), else None."""
    weight = model.head.weight.detach()
    ys, thetas = [], []
    chunks = list(images.chunks(max(cfg.batch_size, 64)))
    for sl in chunks:
        with torch.no_grad():
            h, y = model.forward_with_features(images.get(sl))
        ys.append(y.float())
        thetas.append(feature_angles(h.float(), weight.float()))
    y = torch.cat(ys)
    scale = y.std(0, unbiased=False).clamp_min(_EPS) if cfg.scale_free else None
    atts = [mtr_mod.normalise_attention(mtr_mod.input_attention(model, images.get(sl), scale),
                                        cfg.mtr_norm, cfg.mtr_delta, cfg.mtr_percentile,
                                        cfg.mtr_clip).cpu()
            for sl in chunks] if cfg.mtr else []
    return {"y": y, "theta": torch.cat(thetas), "output_scale": scale,
            "attention": torch.cat(atts) if atts else None}


def kept(x: torch.Tensor, warped: torch.Tensor, cfg) -> torch.Tensor:
    """What the MTR mask keeps in the attended region: x, or with ``warp_through_mtr`` the
    warp branch's W(x) (``warped``) — the mask then shields that region from δ's per-pixel
    change but not from the warp [ours]."""
    return warped if cfg.warp_through_mtr else x


def search_step(model, gen, opt, momentum, x, attention, theta_ref, benign_var, weight, cfg,
                l1_weight: float | None = None):
    """One Adam step of reverse engineering on a batch; returns (outputs F(x̃), terms)."""
    base, gx = gen.with_warped(x)
    xt = mtr_mod.blend(momentum.update(attention), kept(x, base, cfg), gx) if cfg.mtr else gx
    h, y = model.forward_with_features(xt)
    loss, terms = objective(y.float(), h.float(), theta_ref, x, gx, xt, weight, cfg, benign_var,
                            l1_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return y.detach().float(), terms


def run_search(model, images: BenignImages, bench: dict, cfg, seed: int,
               progress: bool = True, desc: str = "DRMGuard", confirm=None) -> Search:
    """Optimise G for ``cfg.steps`` Adam steps on D_b; returns the trigger and its trajectory.

    ``confirm(trigger) -> dict`` (the scan's evaluation on all of D_b): with
    ``select = cheapest_collapse`` the collapsed checkpoints are tried cheapest first until one
    collapses there too (kept as ``Search.evaluation``); none does: the cheapest."""
    device = images.device
    g = seed_everything(seed)
    train_idx, hold_idx = split_holdout(len(images), cfg, seed)
    n = len(train_idx)
    c, hgt, wid = images.u8.shape[3], images.u8.shape[1], images.u8.shape[2]
    gen = build_generator(cfg, c, (hgt, wid)).to(device, memory_format=images.memory_format)
    search_seconds = {}
    pre_err = None
    if cfg.generator == "ia" and cfg.pretrain_steps > 0:
        t0 = time.perf_counter()
        pre_err = pretrain_identity(
            gen, lambda: images.get(train_idx[torch.randint(0, n, (min(cfg.batch_size, n),),
                                                            generator=g)]),
            cfg.pretrain_steps, cfg.pretrain_lr, progress)
        search_seconds["pretrain"] = time.perf_counter() - t0
    r_floor = untouched_r(gen, images, cfg.batch_size)
    weight = model.head.weight.detach().float()
    momentum = mtr_mod.MomentumMap(cfg.mtr_beta, per_image=cfg.mtr_map == "per_image")
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.lr)
    bs = min(cfg.batch_size, n)
    trajectory, history = [], []
    order, pos = train_idx[torch.randperm(n, generator=g)], 0
    gen.train()
    checks = None if hold_idx is None else Checkpoints(model, images, bench, hold_idx, cfg)
    if checks is not None:
        checks.record(0, gen, None)  # the identity (no MTR map yet: it is one)
    t0 = time.perf_counter()
    bar = progress_bar(range(cfg.steps), desc=desc, enabled=progress)
    for step in bar:
        if pos + bs > n:
            order, pos = train_idx[torch.randperm(n, generator=g)], 0
        idx = order[pos:pos + bs]
        pos += bs
        x = images.get(idx)
        att = bench["attention"][idx].to(device) if cfg.mtr else None
        y, terms = search_step(model, gen, opt, momentum, x, att, bench["theta"][idx],
                               output_variance(bench["y"][idx]), weight, cfg,
                               l1_weight_at(step, cfg))
        last = step == cfg.steps - 1
        if step % cfg.track_every == 0 or last:
            trajectory.append((step, y.mean(0).cpu().tolist()))
            history.append((step, terms))
            bar.set_postfix(loss=f"{terms['loss']:.3g}", var=f"{terms['output']:.2g}",
                            l1=f"{terms['l1']:.2g}", rf=f"{terms['rf']:.2g}")
        if checks is not None and ((step + 1) % cfg.checkpoint_every == 0 or last):
            checks.record(step + 1, gen, momentum.weight() if cfg.mtr else None)
    search_seconds["search"] = time.perf_counter() - t0
    final_weight = momentum.weight().detach() if cfg.mtr else None
    per_image = cfg.mtr_map == "per_image"

    def trigger_at(state=None, weight_i=None) -> ReversedTrigger:
        if state is not None:
            gen.load_state_dict(state)
        weight = final_weight
        if cfg.mtr and state is not None:  # the identity checkpoint has no map yet: any map
            weight = weight_i if weight_i is not None else final_weight  # blends x with x
        recalibrate_batchnorm(gen, (images.get(sl) for sl in images.chunks(bs)))
        gen.to(memory_format=torch.contiguous_format)  # the trigger is applied anywhere later
        return ReversedTrigger(gen, weight, cfg, attention_model=model if per_image else None,
                               output_scale=bench["output_scale"] if per_image else None)

    chosen_step, evaluation = None, None
    if checks is None:
        trigger = trigger_at()
    else:
        ranked = checks.ranked()
        for k, i in enumerate(ranked + ranked[:1]):  # the last pass: the cheapest, unconfirmed
            trigger, chosen_step = trigger_at(*checks.states[i]), checks.rows[i]["step"]
            if confirm is None or len(ranked) == 1 or k == len(ranked):
                break
            evaluation = confirm(trigger)
            if evaluation["collapse_ratio"] < cfg.collapse_threshold:
                break
            evaluation = None
    return Search(trigger, seed, trajectory, history, pre_err, r_floor, search_seconds,
                  checks.rows if checks is not None else [], chosen_step, evaluation)


@torch.no_grad()
def untouched_r(gen: TriggerGenerator, images: BenignImages, batch_size: int) -> float:
    """R of the generator before the search: mean ‖G(x) − x‖_1 / max ‖x‖_1 over D_b.

    Exactly 0 for the residual parametrisations; the reconstruction floor for ``ia``.
    """
    l1, norm_max = 0.0, 0.0
    was_training = gen.training
    gen.eval()
    for sl in images.chunks(batch_size):
        x = images.get(sl)
        l1 += float((gen(x) - x).abs().flatten(1).sum(1).sum())
        norm_max = max(norm_max, float(x.flatten(1).sum(1).max()))
    gen.train(was_training)
    return l1 / len(images) / max(norm_max, _EPS)
