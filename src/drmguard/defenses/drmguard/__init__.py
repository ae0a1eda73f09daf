"""DRMGuard: reverse-engineer a trigger of a deep regression model, identify backdoored models,
estimate the target vector, and mitigate by fine-tuning against the reversed trigger.

Python API::

    from drmguard.defenses.drmguard import scan, mitigate, default_config
    result = scan(model, benign_set, task, default_config("cpu", "gaze"), seed=0)
    result.status, result.r_score, result.target_estimate
    clean_model, info = mitigate(model, benign_set, task, scan_result=result)
    result.save("trigger.safetensors")   # later: ScanResult.load(...) → mitigate(scan_result=...)

``make_detector`` / ``make_mitigator`` adapt them to the common defence interface of
:mod:`drmguard.defenses.base`.
"""

from __future__ import annotations

from ...data.base import ArrayDataset
from ...tasks import Task
from ..base import Detection
from .config import DRMGuardConfig, default_config
from .identify import STATUS_BACKDOORED, STATUS_BENIGN, STATUS_NO_TRIGGER
from .mitigation import mitigate
from .scan import SCHEMA, ScanResult, scan


class _Configured:
    """Holds a profile and overrides; the configuration follows the task it is used on (each
    task has its own calibrated λ's), so one object serves gaze and head pose alike."""

    name = "drmguard"

    def __init__(self, profile: str = "cpu", task: str = "gaze", **overrides):
        self.profile, self.overrides = profile, dict(overrides)
        self.config = default_config(profile, task, **overrides)  # validates the overrides

    def config_for(self, task: Task) -> DRMGuardConfig:
        if task.name == self.config.task:
            return self.config
        return default_config(self.profile, task.name, **self.overrides)


class DRMGuardDetector(_Configured):
    """Detector interface: ``score`` = the identification score (higher = more suspicious;
    −R when the outputs collapsed, ≤ −1 when they did not; see :mod:`.identify`),
    ``threshold`` = −τ, ``details`` = ``ScanResult.to_dict()``."""

    def detect(self, model, benign: ArrayDataset, task: Task, seed: int = 0,
               progress: bool = True) -> Detection:
        res = scan(model, benign, task, self.config_for(task), seed=seed, progress=progress)
        return Detection(defense=self.name, backdoored=res.backdoored, score=res.score,
                         threshold=-res.tau, target_estimate=list(res.target_estimate),
                         seconds=res.timings["total"], details=res.to_dict(), result=res)


class DRMGuardMitigator(_Configured):
    """Mitigator interface: scan (unless given the result of an earlier scan), then fine-tune
    a copy on D_b ∪ D_r."""

    def mitigate(self, model, benign: ArrayDataset, task: Task, seed: int = 0,
                 progress: bool = True, scan_result: ScanResult | None = None):
        return mitigate(model, benign, task, scan_result=scan_result,
                        config=self.config_for(task), seed=seed, progress=progress)


def make_detector(profile: str = "cpu", task: str = "gaze", **overrides) -> DRMGuardDetector:
    return DRMGuardDetector(profile, task, **overrides)


def make_mitigator(profile: str = "cpu", task: str = "gaze", **overrides) -> DRMGuardMitigator:
    return DRMGuardMitigator(profile, task, **overrides)


__all__ = ["scan", "mitigate", "ScanResult", "DRMGuardConfig", "default_config",
           "make_detector", "make_mitigator", "DRMGuardDetector", "DRMGuardMitigator",
           "SCHEMA", "STATUS_BACKDOORED", "STATUS_BENIGN", "STATUS_NO_TRIGGER"]
