"""Run profiles: ``tiny`` (tests, seconds), ``cpu`` (default, minutes on 2 cores), ``paper``
(ResNet18 at 224×224 gaze / 112×112 head pose with the paper's schedules, for GPUs).

A profile fixes the synthetic data size, the image size per task, the architecture and the
training schedule. The ``classification`` task (scikit-learn's 8×8 digits, docs/classification.md)
has its own image size and schedule: 16×16 in ``tiny`` and ``cpu`` (a digits classifier trains
in seconds), 32×32 (CIFAR-10's size, the paper's Appendix A.9) in ``paper``. Defences read their own per-profile settings from their config modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .registry import Registry
from .training import TrainConfig


@dataclass(frozen=True)
class Profile:
    name: str
    arch: str
    arch_kwargs: dict = field(default_factory=dict)
    image_size: dict = field(default_factory=dict)  # task -> side length
    n_samples: int = 4000  # synthetic data set size (all splits)
    subjects: int = 20
    train: dict = field(default_factory=dict)  # task -> TrainConfig

    def size_for(self, task: str) -> int:
        return self.image_size.get(task, self.image_size["generic"])

    def train_config(self, task: str, seed: int = 0) -> TrainConfig:
        return replace(self.train.get(task, self.train["generic"]), seed=seed)

    def for_task(self, task: str) -> dict:
        """What of the profile a model of ``task`` depends on (its cache key): the entries of
        other tasks are left out, so adding a task retrains nothing."""
        return {"name": self.name, "arch": self.arch, "arch_kwargs": dict(self.arch_kwargs),
                "image_size": self.size_for(task), "n_samples": self.n_samples,
                "subjects": self.subjects, "train": self.train_config(task).to_dict()}


PROFILES: Registry = Registry("profile")
for _p in (
    Profile(
        name="tiny", arch="small_resnet", arch_kwargs={"widths": [8, 16, 32]},
        image_size={"gaze": 32, "headpose": 32, "generic": 32, "classification": 16},
        n_samples=240, subjects=6,
        train={"generic": TrainConfig(epochs=2, batch_size=32, lr=2e-3),
               "classification": TrainConfig(epochs=3, batch_size=32, lr=3e-3)}),
    Profile(
        name="cpu", arch="small_resnet", arch_kwargs={"widths": [16, 32, 64, 128]},
        image_size={"gaze": 32, "headpose": 32, "generic": 32, "classification": 16},
        n_samples=6000, subjects=30,
        train={"generic": TrainConfig(epochs=20, batch_size=64, lr=2e-3),
               "classification": TrainConfig(epochs=15, batch_size=64, lr=2e-3)}),
    Profile(
        name="paper", arch="resnet18",
        image_size={"gaze": 224, "headpose": 112, "generic": 224, "classification": 32},
        n_samples=30000, subjects=15,
        train={"gaze": TrainConfig(steps=10000, batch_size=64, lr=1e-4, schedule="none"),
               "headpose": TrainConfig(steps=5000, batch_size=64, lr=1e-4, schedule="none"),
               "generic": TrainConfig(steps=10000, batch_size=64, lr=1e-4, schedule="none"),
               "classification": TrainConfig(epochs=30, batch_size=64, lr=1e-3)}),
):
    PROFILES.register(_p.name, _p)


def get_profile(name: str) -> Profile:
    return PROFILES.get(name)


def list_profiles() -> list[str]:
    return PROFILES.list()
