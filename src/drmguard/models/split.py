"""F = F2 ∘ F1: the regression model, its input normalisation, and the automatic split.

:class:`RegressionModel` wraps any ``nn.Module`` that maps normalised images B×C×H×W to B×K.
It takes images in [0, 1], applies the per-channel normalisation, and exposes the feature
vector h = F1(x) (the input of the final ``nn.Linear``) alongside the output F(x) = F2(h).
The final linear layer is found automatically by tracing one forward pass: the last
``nn.Linear`` executed whose output *is* the model's output.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import DrmguardError


def find_head(net: nn.Module, example: torch.Tensor) -> str:
    """Name of the final ``nn.Linear`` whose output is the network's output.

    Raises DrmguardError (with what to pass instead) when there is none.
    """
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, inp, out, n=name: calls.append((n, out)))
               for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            out = net(example)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise DrmguardError(
            f"the model must return a B×K tensor, got "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    for name, o in reversed(calls):
        if o.shape == out.shape and torch.equal(o, out):
            return name
    raise DrmguardError(
        "the model's output does not come from a final nn.Linear layer; pass `feature_layer` "
        "NAME with the name of the linear head")


class RegressionModel(nn.Module):
    """Images in [0,1] -> normalisation -> ``net`` -> B×K, with F1/F2 access.

    ``head`` names the final linear layer of ``net`` (found automatically when omitted).
    """

    def __init__(self, net: nn.Module, input_size: Sequence[int], in_channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 head: str | None = None):
        super().__init__()
        self.net = net
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.in_channels = int(in_channels)
        mean = [0.0] * in_channels if mean is None else list(mean)
        std = [1.0] * in_channels if std is None else list(std)
        if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
            raise DrmguardError(
                f"mean/std must have {in_channels} values each, std positive; got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        example = torch.rand(2, in_channels, *self.input_size)
        self.head_name = head or find_head(net, self.normalise(example))
        modules = dict(net.named_modules())
        if self.head_name not in modules or not isinstance(modules[self.head_name], nn.Linear):
            raise DrmguardError(f"'{self.head_name}' is not an nn.Linear layer of the model")
        self._head = [modules[self.head_name]]  # list: not registered twice as a submodule
        self._captured: list[torch.Tensor] = []
        self._capturing = False
        self._head[0].register_forward_hook(self._capture)

    # --- internals -------------------------------------------------------------------
    def _capture(self, module, inputs, output):
        if self._capturing:
            self._captured.append(inputs[0])

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    # --- public API --------------------------------------------------------------------
    @property
    def head(self) -> nn.Linear:
        """F2: the final linear layer (weight W ∈ R^{K×m}, bias b)."""
        return self._head[0]

    @property
    def num_outputs(self) -> int:
        return self.head.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, y): F1(x) flattened to B×m and F(x) = W h + b, from one forward pass."""
        self._captured, self._capturing = [], True
        try:
            y = self.net(self.normalise(x))
        finally:
            self._capturing = False
        if not self._captured:
            raise DrmguardError("the linear head was not called during the forward pass")
        h, self._captured = self._captured[-1], []
        return h.flatten(1), y

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]
