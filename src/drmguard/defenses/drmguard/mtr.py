"""Momentum reverse trigger (MTR, Eq. 7 / Appendix A.1): keep the DRM's attended pixels benign.

Minimising Eq. 5 directly lets the generator perturb the regions the model attends to most (the
eyes for gaze) and so destroy the task features, which collapses the outputs of a *benign* model
too. The MTR feeds the model a blend x̃ = M ⊙ x + (1 − M) ⊙ G(x) whose weight M is high where the
model looks: the search must then go through the regions the model normally ignores.

Our formulation [ours; the paper states it only in words]:

1. A(x)_ij = Σ_c |∂(Σ_k F_k(x) / s_k) / ∂x_c,ij| on the *benign* image (the task attention; on x̃
   it would hide the real trigger once G finds it). s_k is output k's benign standard deviation
   when the scan is scale-free (so no output dominates the map because of its units), else 1.
2. Rescaled to [0, 1): ``max`` divides by max A · (1 + δ) (the paper's words); ``percentile``
   divides by the image's q-th percentile and clips at ``clip`` < 1 (every pixel at or above the
   percentile gets weight ``clip``; pitfall 5 of docs/method.md).
3. Momentum: M_t = β M_{t−1} + (1 − β) · mean over the batch of Â (M_1 = the first batch's mean),
   or each image's own map (``per_image``).

The model is frozen during reverse engineering, so A is computed once per benign image
(:func:`attention_maps`) and the momentum runs over these cached maps, batch by batch.
"""

from __future__ import annotations

import torch

from ...errors import DrmguardError


def input_attention(model, x: torch.Tensor, output_scale: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Raw attention B×H×W: Σ_c |∂(Σ_k F_k(x) / s_k)/∂x_c| for a batch of benign images, with
    s = ``output_scale`` (K; None: 1).

    Uses ``torch.autograd.grad`` so the model's parameter gradients are left untouched. For a
    classifier (:class:`~.outputs.ProbabilityView`) the gradient of its predicted class's logit.
    """
    x = x.detach().requires_grad_(True)
    classifier = getattr(model, "attention_outputs", None)  # a classifier's ProbabilityView
    with torch.enable_grad():
        if classifier is not None:  # Σ_k p_k is constant: the predicted class's logit instead
            (grad,) = torch.autograd.grad(classifier(x).sum(), x)
            return grad.abs().sum(1)
        y = model(x)
        if output_scale is not None:
            y = y / output_scale.to(y.device, y.dtype)
        (grad,) = torch.autograd.grad(y.sum(), x)
    return grad.abs().sum(1)


def normalise_attention(a: torch.Tensor, norm: str = "percentile", delta: float = 1e-3,
                        percentile: float = 80.0, clip: float = 0.99) -> torch.Tensor:
    """Per-image rescaling of raw attention maps B×H×W to weights in [0, 1)."""
    flat = a.flatten(1)
    if norm == "max":
        if delta <= 0:
            raise DrmguardError("MTR max normalisation needs mtr_delta > 0 (weights must be < 1)")
        scale = flat.amax(1) * (1.0 + delta)
        out = flat / scale.clamp_min(1e-12)[:, None]
    elif norm == "percentile":
        q = torch.quantile(flat, percentile / 100.0, dim=1)
        out = (flat / q.clamp_min(1e-12)[:, None]).clamp(max=clip)
    else:
        raise DrmguardError(f"unknown MTR normalisation '{norm}' (max or percentile)")
    return out.view_as(a)


def attention_maps(model, images: torch.Tensor, batch_size: int, cfg,
                   output_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised attention Â (N×H×W, values in [0,1)) for every benign image."""
    out = []
    for i in range(0, len(images), batch_size):
        a = input_attention(model, images[i:i + batch_size], output_scale)
        out.append(normalise_attention(a, cfg.mtr_norm, cfg.mtr_delta, cfg.mtr_percentile,
                                       cfg.mtr_clip))
    return torch.cat(out)


class MomentumMap:
    """Running attention map; :meth:`update` returns the blend weight for the current batch."""

    def __init__(self, beta: float = 0.9, per_image: bool = False):
        if not 0 <= beta < 1:
            raise DrmguardError(f"MTR momentum must be in [0, 1), got {beta}")
        self.beta, self.per_image = float(beta), bool(per_image)
        self.map: torch.Tensor | None = None  # H×W

    def update(self, a: torch.Tensor) -> torch.Tensor:
        """Feed the batch's normalised maps (B×H×W); weight (B or 1)×1×H×W for blending."""
        m = a.mean(0)
        self.map = m.clone() if self.map is None else self.beta * self.map + (1 - self.beta) * m
        return a[:, None] if self.per_image else self.map[None, None]

    def weight(self) -> torch.Tensor:
        """The current running map as a 1×1×H×W weight."""
        if self.map is None:
            raise DrmguardError("the MTR map has not been updated yet")
        return self.map[None, None]


def blend(weight: torch.Tensor, x: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """x̃ = M ⊙ x + (1 − M) ⊙ G(x) (M broadcast over channels)."""
    return weight * x + (1.0 - weight) * gx
