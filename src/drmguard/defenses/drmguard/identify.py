"""Backdoor identification: R(F), the collapse check, the verdict and the detection score.

    R(F) = [ (1/N) Σ_{x∈D_b} ‖x̃ − x‖_1 ] / ‖x_max‖_1,   x_max = argmax_{x∈D_b} ‖x‖_1   [source]

A small R alone is not evidence: a search that never left the identity also has R ≈ 0
(pitfall 6 of docs/method.md). The verdict therefore needs both

- **collapse**: the reversed outputs concentrate, i.e. the collapse ratio
  (1/K) Σ_k Var[F_k(x̃)] / Var[F_k(x)] over D_b is below ``collapse_threshold`` [ours]; and
- **cheapness**: R < τ [source].

Status: ``backdoored`` (both), ``benign`` (collapsed, but only with a large perturbation), or
``no cheap trigger found`` (the outputs never collapsed; reads as benign).

Detection score (higher = more likely backdoored, for ROC-AUC) [ours]:
``score = −min(R, 1)`` when collapsed, else ``−1 − collapse_ratio``. Every collapsed search
outranks every non-collapsed one; within each group the order follows −R (the paper's score),
resp. how far the outputs collapsed. The verdict is exactly ``score > −τ``.
"""

from __future__ import annotations

import torch

from .reverse import BenignImages, ReversedTrigger, angle_variance_ratio, feature_angles, input_l1

STATUS_BACKDOORED = "backdoored"
STATUS_BENIGN = "benign"
STATUS_NO_TRIGGER = "no cheap trigger found"
_EPS = 1e-12


def r_score(l1_per_image: torch.Tensor, norms: torch.Tensor) -> float:
    """R = mean_i ‖x̃_i − x_i‖_1 / max_i ‖x_i‖_1 (both as per-image sums over C×H×W)."""
    return float(l1_per_image.mean() / norms.max().clamp_min(_EPS))


def collapse_ratio(y_rev: torch.Tensor, y_ben: torch.Tensor) -> float:
    """(1/K) Σ_k Var[F_k(x̃)] / Var[F_k(x)]: 1 = as spread as the clean outputs, 0 = one point."""
    v, v_ref = y_rev.var(0, unbiased=False), y_ben.var(0, unbiased=False)
    return float((v / v_ref.clamp_min(_EPS)).mean())


@torch.no_grad()
def trigger_statistics(model, images: torch.Tensor, trigger, batch_size: int = 256) -> dict:
    """R, mean change per pixel and collapse ratio of a *given* trigger function on ``images``
    (B×C×H×W in [0, 1]): what the identification rule would see had a search found exactly
    this trigger — e.g. an attack's own trigger, to tell a missed search from a trigger that
    is too large for R < τ."""
    from ...training import predict

    l1, norms, ys, ys_trig = [], [], [], []
    for i in range(0, len(images), batch_size):  # the trigger applied once per batch
        x = images[i:i + batch_size]
        xt = trigger(x)
        l1.append((xt - x).abs().flatten(1).sum(1))
        norms.append(x.flatten(1).sum(1))
        ys.append(predict(model, x, batch_size))
        ys_trig.append(predict(model, xt, batch_size))
    l1 = torch.cat(l1)
    return {"R": r_score(l1, torch.cat(norms)),
            "mean_abs_change_per_pixel": float(l1.sum()) / images.numel(),
            "collapse_ratio": collapse_ratio(torch.cat(ys_trig), torch.cat(ys))}


def verdict(r: float, ratio: float, tau: float, collapse_threshold: float) -> tuple[bool, str]:
    """(backdoored?, status) from R and the collapse ratio."""
    if not ratio < collapse_threshold:
        return False, STATUS_NO_TRIGGER
    if r < tau:
        return True, STATUS_BACKDOORED
    return False, STATUS_BENIGN


def detection_score(r: float, ratio: float, collapse_threshold: float) -> float:
    """Monotone backdoor score (see the module docstring); verdict ⇔ score > −τ."""
    if ratio < collapse_threshold:
        return -min(float(r), 1.0)
    return -1.0 - float(ratio)


@torch.no_grad()
def _features(model, x):
    h, y = model.forward_with_features(x)
    return h.float(), y.float()


def evaluate_trigger(model, trigger: ReversedTrigger, images: BenignImages, bench: dict,
                     cfg, batch_size: int = 256) -> dict:
    """Apply the final trigger to all of D_b and measure R, collapse, RAV/RNV, the target estimate
    and the objective's terms over the whole set."""
    l1s, norms, gen_l1, ys, hs, hs_ben = [], [], [], [], [], []
    for sl in images.chunks(batch_size):
        x = images.get(sl)
        gx, xt = trigger.generate(x)
        l1s.append((xt - x).abs().flatten(1).sum(1).cpu())
        gen_l1.append((gx - x).abs().flatten(1).cpu())
        norms.append(x.flatten(1).sum(1).cpu())
        h, y = _features(model, xt)
        ys.append(y.cpu())
        hs.append(h.cpu())
        hs_ben.append(_features(model, x)[0].cpu())
    l1s, norms, y_rev, h_rev = torch.cat(l1s), torch.cat(norms), torch.cat(ys), torch.cat(hs)
    h_ben = torch.cat(hs_ben)
    y_ben, theta_ben = bench["y"].cpu(), bench["theta"].cpu()
    weight = model.head.weight.detach().float().cpu()
    rav = float(angle_variance_ratio(feature_angles(h_rev, weight), theta_ben,
                                     cfg.rav_aggregation))
    rnv = float(h_rev.norm(dim=1).var(unbiased=False) /
                h_ben.norm(dim=1).var(unbiased=False).clamp_min(_EPS))
    out_var = y_rev.var(0, unbiased=False)
    output = out_var / y_ben.var(0, unbiased=False).clamp_min(_EPS) if cfg.scale_free else out_var
    diff = torch.cat(gen_l1) if cfg.l1_on == "generator" else None
    if diff is None:  # L1 on the blend: ‖x̃ − x‖ already summed per image
        n_pix = images.u8[0].numel()
        l1_term = float(l1s.mean() / (n_pix if cfg.l1_reduction == "mean" else 1))
    else:
        l1_term = float(input_l1(diff, cfg.l1_reduction))
    out_term = float(output.mean())
    r = r_score(l1s, norms)
    ratio = collapse_ratio(y_rev, y_ben)
    return {
        "R": r,
        "collapse_ratio": ratio,
        "rav": rav,
        "rnv": rnv,
        "target_estimate": y_rev.mean(0).tolist(),
        "reversed_output_std": y_rev.std(0, unbiased=False).tolist(),
        "benign_output_std": y_ben.std(0, unbiased=False).tolist(),
        "mean_abs_change_per_pixel": float(l1s.mean() / images.u8[0].numel()),
        "objective": {"loss": cfg.lambda1 * out_term + cfg.l1_weight * l1_term + cfg.lambda3 * rav,
                      "output": out_term, "l1": l1_term, "rf": rav},
    }
