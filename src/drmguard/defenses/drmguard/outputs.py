"""What DRMGuard reads of a model's outputs: the outputs of a regression model, the softmax
probabilities of a classifier (the paper's Appendix A.9).

:class:`ProbabilityView` wraps a classifier (a :class:`~drmguard.models.split.RegressionModel`
whose outputs are K logits) so that the whole scan — the output-variance term of Eq. 5, the
collapse ratio, the target estimate — runs unchanged on p = softmax(logits). Two things differ
from simply replacing the outputs:

- the MTR attention (:func:`.mtr.input_attention`) cannot be the gradient of Σ_k p_k, which is
  constant (1); the view offers ``attention_outputs``: the logit of the predicted class, whose
  input gradient is the classic saliency map (Simonyan et al., 2014) [ours];
- the FSRT uses the head's weight rows W_k as for regression (the view passes ``head``
  through), but is off by default for classifiers: the paper drops it (A.9).

A regression scan never builds a view (:func:`view_for` returns the model itself), so its path
is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class ProbabilityView(nn.Module):
    """A classifier seen through softmax: ``forward`` and ``forward_with_features`` return
    probabilities; ``head``, sizes and channels are the classifier's."""

    def __init__(self, model):
        from ...tasks import get_task

        super().__init__()
        self.model = model
        # the classification task's output transform (softmax): one definition for both
        self.probabilities = get_task("classification", dim=model.num_outputs).output_transform

    @property
    def head(self) -> nn.Linear:
        return self.model.head

    @property
    def head_name(self) -> str:
        return self.model.head_name

    @property
    def num_outputs(self) -> int:
        return self.model.num_outputs

    @property
    def in_channels(self) -> int:
        return self.model.in_channels

    @property
    def input_size(self) -> tuple[int, int]:
        return self.model.input_size

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probabilities(self.model(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, y = self.model.forward_with_features(x)
        return h, self.probabilities(y)

    def attention_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The logit of each image's predicted class (B,): what the MTR attention
        differentiates for a classifier."""
        z = self.model(x)
        return z.gather(1, z.argmax(1, keepdim=True))[:, 0]


def view_for(model, task):
    """The model DRMGuard scans: a :class:`ProbabilityView` of a classifier, else ``model``.
    ``task``: a :class:`~drmguard.tasks.Task` or a task name."""
    classifier = (task == "classification" if isinstance(task, str)
                  else getattr(task, "is_classification", False))
    if classifier and not isinstance(model, ProbabilityView):
        return ProbabilityView(model)
    return model
