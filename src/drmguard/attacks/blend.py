"""Blended (Chen et al. 2017): a fixed key image blended into the whole image, dirty label.

x' = (1 − α) x + α K with K a seeded uniform-noise key image (stored with the model), α = 0.2
for training and testing; ``rate`` (0.1) of the training set is poisoned and relabelled y_t.
"""

from __future__ import annotations

import torch

from ..errors import DrmguardError
from .base import Attack


class Blend(Attack):
    name = "blend"
    defaults = {"rate": 0.1, "alpha": 0.2}
    state_keys = ("key",)

    def _validate(self) -> None:
        super()._validate()
        if not 0 < float(self.options["alpha"]) < 1:
            raise DrmguardError(f"alpha must be in (0, 1), got {self.options['alpha']}")

    def _build(self) -> None:
        self.key = torch.rand(self.channels, *self.image_size, generator=self.rng(7))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"key": self.key}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state(state)
        key = state["key"].float()
        if tuple(key.shape) != (self.channels, *self.image_size):
            raise DrmguardError("the saved blend key does not match the image size")
        self.key = key

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        a = float(self.options["alpha"])
        return (1 - a) * x + a * self.key.to(x)
