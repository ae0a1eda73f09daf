"""The common defence interface: every detector yields a score per model, every mitigator a
repaired model. Experiments use only this interface (``get_detector`` / ``get_mitigator``).

Score convention: **higher score = more likely backdoored** (so ROC-AUC is computed on it
directly). A defence whose natural statistic runs the other way (DRMGuard's R, Neural
Cleanse's mask norm) reports its negation as ``score`` and the raw value in ``details``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Protocol

from ..data.base import ArrayDataset
from ..registry import Lazy, Registry
from ..models.split import RegressionModel
from ..tasks import Task


@dataclass
class Detection:
    defense: str
    backdoored: bool
    score: float  # higher = more likely backdoored
    threshold: float | None = None  # on ``score``'s scale, when the defence has one
    target_estimate: list[float] | None = None
    seconds: float = 0.0
    details: dict = field(default_factory=dict)  # JSON-serialisable, defence-specific
    # the defence's full in-memory result (e.g. DRMGuard's ScanResult with its trigger
    # function); not serialised
    result: object = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)
                if f.name != "result"}


class Detector(Protocol):
    name: str

    def detect(self, model: RegressionModel, benign: ArrayDataset, task: Task,
               seed: int = 0, progress: bool = True) -> Detection: ...


class Mitigator(Protocol):
    name: str

    def mitigate(self, model: RegressionModel, benign: ArrayDataset, task: Task,
                 seed: int = 0, progress: bool = True) -> tuple[RegressionModel, dict]: ...


# name -> factory (profile: str, task: str, **overrides), imported on first use.
DETECTORS: Registry = Registry("detector")
DETECTORS.register("drmguard", Lazy("drmguard.defenses.drmguard:make_detector"))
DETECTORS.register("nc", Lazy("drmguard.defenses.neural_cleanse:make_detector"))
DETECTORS.register("featurere", Lazy("drmguard.defenses.featurere:make_detector"))
MITIGATORS: Registry = Registry("mitigator")
MITIGATORS.register("drmguard", Lazy("drmguard.defenses.drmguard:make_mitigator"))
MITIGATORS.register("ft", Lazy("drmguard.defenses.finetune:make_mitigator"))
MITIGATORS.register("fp", Lazy("drmguard.defenses.fine_pruning:make_mitigator"))
MITIGATORS.register("anp", Lazy("drmguard.defenses.anp:make_mitigator"))


def get_detector(name: str, profile: str = "cpu", task: str = "gaze", **overrides) -> Detector:
    return DETECTORS.get(name)(profile=profile, task=task, **overrides)


def get_mitigator(name: str, profile: str = "cpu", task: str = "gaze", **overrides) -> Mitigator:
    return MITIGATORS.get(name)(profile=profile, task=task, **overrides)


def resolved_config(defense, task: Task | str) -> dict:
    """The full settings a detector or mitigator will run with on ``task`` (defaults and
    overrides resolved), for cache keys and result records."""
    from ..tasks import get_task

    cfg = defense.config_for(get_task(task) if isinstance(task, str) else task)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else asdict(cfg)
