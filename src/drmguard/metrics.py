"""Metrics: regression error, attack metrics (RE, AE, DAE, RNV, RAV, target estimate) and
detection metrics (confusion counts, accuracy, ROC-AUC).

Feature-space metrics (method.md Eq. 3), with h = F1(x) the input of the final linear layer
and W_k its k-th weight row:

- θ_k(x) = arccos(W_k · h / (‖W_k‖ ‖h‖))                                (:func:`feature_angles`)
- RNV = Var{‖F1(T(x))‖} / Var{‖F1(x)‖}
- RAV = mean_k Var{θ_k(T(x))} / Var{θ_k(x)}   ("mean_of_ratios", the default), or
        Σ_k Var{θ_k(T(x))} / Σ_k Var{θ_k(x)}  ("ratio_of_sums")

Variances are population variances over the set. The angle functions are differentiable, so the
adaptive attack (and DRMGuard's feature-space regulariser) can use them in a loss.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .data.base import ArrayDataset
from .errors import DrmguardError
from .models.split import RegressionModel
from .tasks import Task

AGGREGATIONS = ("mean_of_ratios", "ratio_of_sums")
_EPS = 1e-12


# --- regression errors -----------------------------------------------------------------------

def _outputs_and_features(model: RegressionModel, x: torch.Tensor, batch_size: int = 256,
                          transform: Callable[[torch.Tensor], torch.Tensor] | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features B×m, outputs B×K) on CPU, in batches, without gradients."""
    model.eval()
    device = next(model.parameters()).device
    hs, ys = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            if transform is not None:
                xb = transform(xb)
            h, y = model.forward_with_features(xb.to(device))
            hs.append(h.float().cpu())
            ys.append(y.float().cpu())
    if not hs:
        raise DrmguardError("no images to evaluate")
    return torch.cat(hs), torch.cat(ys)


def regression_error(model: RegressionModel, x: torch.Tensor, y: torch.Tensor, task: Task,
                     batch_size: int = 256) -> float:
    """Mean task error (degrees for gaze / head pose) of ``model`` on images ``x`` vs ``y``."""
    if len(x) != len(y):
        raise DrmguardError(f"{len(x)} images but {len(y)} labels")
    _, out = _outputs_and_features(model, x, batch_size)
    return float(task.error(out, torch.as_tensor(y, dtype=out.dtype)).mean())


# --- feature-space metrics -----------------------------------------------------------------

def angles_from_features(h: torch.Tensor, weight: torch.Tensor, margin: float = 1e-6
                         ) -> torch.Tensor:
    """θ (B×K, radians) between feature vectors h (B×m) and the rows of W (K×m).

    Differentiable; the cosine is clamped ``margin`` inside [−1, 1] so that the gradient stays
    finite (the evaluation metrics use margin 0 in double precision).
    """
    cos = (h @ weight.t()) / (h.norm(dim=1, keepdim=True) * weight.norm(dim=1)[None] + _EPS)
    return torch.acos(cos.clamp(-1 + margin, 1 - margin))


def _eval_angles(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Exact angles for reporting (float64, no clamp margin)."""
    return angles_from_features(h.double(), weight.double(), margin=0.0)


def feature_angles(model: RegressionModel, x: torch.Tensor, margin: float = 1e-6
                   ) -> torch.Tensor:
    """θ_k(x) for every image (B×K, radians); differentiable w.r.t. x and the model."""
    h, _ = model.forward_with_features(x)
    return angles_from_features(h, model.head.weight, margin)


def variance_ratio(num: torch.Tensor, den: torch.Tensor, aggregation: str = "mean_of_ratios"
                   ) -> torch.Tensor:
    """Aggregate per-component ratios Var(num_k)/Var(den_k) over k (population variances).

    ``num`` and ``den`` are B1×K and B2×K (K may be 1). Differentiable.
    """
    if aggregation not in AGGREGATIONS:
        raise DrmguardError(f"unknown aggregation '{aggregation}' (choose "
                            f"{' or '.join(AGGREGATIONS)})")
    if num.shape[0] < 2 or den.shape[0] < 2:
        raise DrmguardError("variance ratios need at least two samples on each side")
    v_num = num.var(dim=0, unbiased=False)
    v_den = den.var(dim=0, unbiased=False)
    if aggregation == "mean_of_ratios":
        return (v_num / (v_den + _EPS)).mean()
    return v_num.sum() / (v_den.sum() + _EPS)


def rav_from_angles(theta_poisoned: torch.Tensor, theta_clean: torch.Tensor,
                    aggregation: str = "mean_of_ratios") -> torch.Tensor:
    """RAV from angle matrices (B×K); a differentiable 0-dim tensor."""
    return variance_ratio(theta_poisoned, theta_clean, aggregation)


def rnv_rav(model: RegressionModel, x_clean: torch.Tensor, x_poisoned: torch.Tensor,
            aggregation: str = "mean_of_ratios", batch_size: int = 256) -> tuple[float, float]:
    """(RNV, RAV) of ``model`` for clean images and their poisoned versions (Eq. 3)."""
    h_c, _ = _outputs_and_features(model, x_clean, batch_size)
    h_p, _ = _outputs_and_features(model, x_poisoned, batch_size)
    w = model.head.weight.detach().float().cpu()
    rnv = variance_ratio(h_p.double().norm(dim=1, keepdim=True),
                         h_c.double().norm(dim=1, keepdim=True))
    rav = rav_from_angles(_eval_angles(h_p, w), _eval_angles(h_c, w), aggregation)
    return float(rnv), float(rav)


# --- attack metrics --------------------------------------------------------------------------

def attack_metrics(model: RegressionModel, attack, ds: ArrayDataset | tuple, task: Task,
                   aggregation: str = "mean_of_ratios", batch_size: int = 256,
                   max_samples: int | None = None) -> dict:
    """RE, AE, DAE, RNV, RAV and the real target vector of a backdoored model.

    - RE: error to the true labels on clean inputs;
    - AE: error to y_t on poisoned inputs T(x) (all inputs, as in the paper);
    - DAE: error to the true labels on poisoned inputs;
    - CTE: error to y_t on the *clean* inputs, F(x) against y_t: what AE would be if the trigger
      did nothing (the reference of :func:`implanted`);
    - RNV, RAV: Eq. 3 on (x, T(x));
    - real_target: mean model output on the poisoned inputs (the paper's "real target"
      vector, which DRMGuard's target estimate is compared with).

    ``ds`` is a dataset or a pair (images B×C×H×W in [0,1], labels B×K). Multi-target attacks
    add per-target lists (``AE_per_target`` ...); the top-level values refer to target 1.
    Errors are in the task's error units (degrees for gaze and head pose).

    Classification (one-hot labels, logits out; the errors are then misclassification rates)
    adds ``accuracy`` (clean accuracy, 1 − RE), ``ASR`` (attack success rate: the fraction of
    triggered inputs whose true class is not the target that are classified as the target),
    ``target_class`` and ``real_target_class`` (the most frequent class on triggered inputs).
    """
    if isinstance(ds, ArrayDataset):
        if len(ds) == 0:
            raise DrmguardError("the evaluation set is empty")
        idx = None if max_samples is None or len(ds) <= max_samples else \
            np.sort(np.random.default_rng(0).choice(len(ds), max_samples, replace=False))
        x, y = ds.tensors(idx)
    else:
        x, y = ds
        y = torch.as_tensor(y, dtype=torch.float32)
    if len(x) < 2:
        raise DrmguardError("attack metrics need at least two images")
    if y.shape[1] != task.dim or attack.target.numel() != task.dim:
        raise DrmguardError(f"labels ({y.shape[1]}), target ({attack.target.numel()}) and task "
                            f"{task.name} ({task.dim}) must have the same dimension")
    h_c, out_c = _outputs_and_features(model, x, batch_size)
    w = model.head.weight.detach().float().cpu()
    theta_c = _eval_angles(h_c, w)
    norm_c = h_c.double().norm(dim=1, keepdim=True)
    result = {"n": int(len(x)), "error_units": task.error_units,
              "RE": float(task.error(out_c, y).mean()), "aggregation": aggregation}
    per = {"AE": [], "DAE": [], "CTE": [], "RNV": [], "RAV": [], "target": [],
           "real_target": [], "ASR": [], "target_class": [], "real_target_class": []}
    for i, target in enumerate(attack.targets):
        h_p, out_p = _outputs_and_features(model, x, batch_size,
                                           transform=lambda xb, i=i: attack.apply_for(xb, i))
        t = target.to(out_p).expand_as(out_p)
        per["AE"].append(float(task.error(out_p, t).mean()))
        per["DAE"].append(float(task.error(out_p, y).mean()))
        per["CTE"].append(float(task.error(out_c, target.to(out_c).expand_as(out_c)).mean()))
        per["RNV"].append(float(variance_ratio(h_p.double().norm(dim=1, keepdim=True), norm_c)))
        per["RAV"].append(float(rav_from_angles(_eval_angles(h_p, w), theta_c, aggregation)))
        per["target"].append(target.tolist())
        per["real_target"].append(out_p.mean(0).tolist())
        if task.is_classification:
            t_cls = int(target.argmax())
            keep = y.argmax(1) != t_cls
            pred_p = out_p.argmax(1)
            per["ASR"].append(float((pred_p[keep] == t_cls).float().mean()) if keep.any()
                              else float("nan"))
            per["target_class"].append(t_cls)
            per["real_target_class"].append(int(torch.bincount(pred_p, minlength=task.dim)
                                                .argmax()))
    if task.is_classification:
        result["accuracy"] = 1.0 - result["RE"]
    for key, values in per.items():
        if not values:
            continue
        result[key] = values[0]
        if len(attack.targets) > 1:
            result[f"{key}_per_target"] = values
    return result


#: AE must be below this fraction of CTE for a backdoor to count as implanted (see implanted)
IMPLANT_FRACTION = 0.25
#: classification: the attack success rate a backdoor needs to count as implanted
IMPLANT_ASR = 0.9


def implanted(metrics: dict, fraction: float = IMPLANT_FRACTION) -> bool:
    """Whether a backdoor is implanted: AE < ``fraction`` · CTE, for every target.

    ``metrics`` is an :func:`attack_metrics` result (or any dict with ``AE`` and ``CTE``, and
    ``AE_per_target``/``CTE_per_target`` for multi-target attacks). AE is the error of F(T(x))
    to the target; CTE the error of the clean outputs F(x) to the same target, i.e. the AE of
    a model whose trigger does nothing. Measured against CTE rather than against RE or a
    fixed number of degrees, it scales with how far the target is from what the model outputs
    anyway.

    The default 0.25 is chosen so that a trigger that merely collapses the outputs onto the
    label mean does not count, for targets drawn at least one standard deviation from the mean
    (:func:`drmguard.experiments.zoo.draw_target`): such a collapse gives AE/CTE ≥ 0.59 (gaze)
    and ≥ 0.37 (head pose) on the synthetic label distributions, while the implanted cpu-profile
    backdoors have AE ≈ 1–1.6° against CTE ≈ 20–30° (AE/CTE ≈ 0.05).

    Classification metrics (with ``ASR``) use the classifier's criterion instead: ASR ≥
    :data:`IMPLANT_ASR` (0.9) for every target.
    """
    if "ASR" in metrics:
        asr = metrics.get("ASR_per_target", [metrics["ASR"]])
        return bool(asr) and all(a is not None and a >= IMPLANT_ASR for a in asr)
    if not fraction > 0:
        raise DrmguardError(f"the implant fraction must be positive, got {fraction!r}")
    try:
        ae = metrics.get("AE_per_target", [metrics["AE"]])
        cte = metrics.get("CTE_per_target", [metrics["CTE"]])
    except KeyError as err:
        raise DrmguardError(f"implanted() needs attack metrics with AE and CTE, missing "
                            f"{err}") from None
    if len(ae) != len(cte) or not ae:
        raise DrmguardError(f"{len(ae)} AE values but {len(cte)} CTE values")
    return bool(all(a < fraction * c for a, c in zip(ae, cte)))


# --- detection metrics ---------------------------------------------------------------------

def detection_metrics(is_backdoored: Sequence[bool], scores: Sequence[float],
                      flagged: Sequence[bool]) -> dict:
    """Confusion counts, accuracy and ROC-AUC of a detector over a set of models.

    ``scores``: higher = more likely backdoored; ``flagged``: the detector's verdicts.
    ROC-AUC (scikit-learn) is None when only one class is present.
    """
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(is_backdoored, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    f = np.asarray(flagged, dtype=bool)
    if not (len(truth) == len(s) == len(f)):
        raise DrmguardError(f"detection metrics need equal lengths, got {len(truth)} labels, "
                            f"{len(s)} scores, {len(f)} verdicts")
    if len(truth) == 0:
        raise DrmguardError("detection metrics need at least one model")
    if not np.isfinite(s).all():
        raise DrmguardError("detection scores contain NaN or inf")
    tp = int((truth & f).sum())
    fp = int((~truth & f).sum())
    fn = int((truth & ~f).sum())
    tn = int((~truth & ~f).sum())
    auc = float(roc_auc_score(truth, s)) if 0 < truth.sum() < len(truth) else None
    return {"TP": tp, "FP": fp, "FN": fn, "TN": tn, "n": int(len(truth)),
            "accuracy": (tp + tn) / len(truth), "roc_auc": auc}
