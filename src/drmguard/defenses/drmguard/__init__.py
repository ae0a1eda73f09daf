"""DRMGuard: reverse-engineer a trigger of a deep regression model, identify backdoored models,
estimate the target vector, and mitigate by fine-tuning against the reversed trigger.

Python API::

    from drmguard.defenses.drmguard import scan, mitigate, default_config
    result = scan(model, benign_set, task, default_config("cpu", "gaze"), seed=0)
    result.status, result.r_score, result.target_estimate
    clean_model, info = mitigate(model, benign_set, task, scan_result=result)
    result.save("trigger.safetensors")   # later: ScanResult.load(...) → mitigate(scan_result=...)

:class:`DRMGuard` (``make_detector`` / ``make_mitigator``) adapts them to the common defence
interface of :mod:`drmguard.defenses.base`.
"""

from __future__ import annotations

from ...data.base import ArrayDataset
from ...tasks import Task
from ..base import Defence, Detection
from .config import (PROFILE_DEFAULTS, PROFILE_TASK_DEFAULTS, TASK_DEFAULTS, DRMGuardConfig,
                     default_config)
from .identify import STATUS_BACKDOORED, STATUS_BENIGN, STATUS_NO_TRIGGER
from .mitigation import mitigate
from .scan import SCHEMA, ScanResult, scan
from .scan import _check_inputs as check_scan_inputs


class DRMGuard(Defence):
    """DRMGuard on the common defence interface (:class:`~drmguard.defenses.base.Defence`).

    Detection: ``score`` = the identification score (higher = more suspicious; −R when the
    outputs collapsed, ≤ −1 when they did not; see :mod:`.identify`), ``threshold`` = −τ,
    ``details`` = ``ScanResult.to_dict()``, ``result`` = the :class:`ScanResult` with its
    trigger. Mitigation: scan (unless ``prior`` holds an earlier scan of the model), then
    fine-tune a copy on D_b ∪ D_r. The configuration follows the task it is used on (each task
    has its own calibrated λ's), so one object serves gaze and head pose alike."""

    name, title, config_class = "drmguard", "DRMGuard", DRMGuardConfig
    profile_defaults = PROFILE_DEFAULTS
    task_defaults = TASK_DEFAULTS
    profile_task_defaults = PROFILE_TASK_DEFAULTS
    trigger_cost_run = "trigger-cost"
    supports_classification = True  # on the softmax outputs (Appendix A.9)

    def trigger_cost(self, model, images, trigger) -> dict:
        """R, change per pixel and collapse ratio of ``trigger`` on ``images`` (a classifier's
        collapse on its softmax outputs, as its scan measures it)."""
        from .identify import trigger_statistics
        from .outputs import view_for

        return trigger_statistics(view_for(model, self.task), images, trigger)

    def check_inputs(self, model, benign: ArrayDataset, task: Task) -> None:
        check_scan_inputs(model, benign, task)

    def _detect(self, model, benign: ArrayDataset, task: Task, cfg, seed, progress) -> Detection:
        return self.detection(scan(model, benign, task, cfg, seed=seed, progress=progress))

    @staticmethod
    def detection(res: ScanResult) -> Detection:
        """A scan result as a :class:`Detection` (the result itself in ``result``)."""
        return Detection(defense="drmguard", backdoored=res.backdoored, score=res.score,
                         threshold=-res.tau, target_estimate=list(res.target_estimate),
                         seconds=res.timings["total"], details=res.to_dict(), result=res)

    def mitigate(self, model, benign: ArrayDataset, task: Task, seed: int = 0,
                 progress: bool = True, prior: Detection | ScanResult | None = None,
                 scan_result: ScanResult | None = None):
        """See :meth:`Defence.mitigate`; ``scan_result`` is the older spelling of ``prior``."""
        return super().mitigate(model, benign, task, seed, progress,
                                prior if prior is not None else scan_result)

    def _mitigate(self, model, benign: ArrayDataset, task: Task, cfg, seed, progress, prior):
        earlier = getattr(prior, "result", prior)
        return mitigate(model, benign, task, scan_result=earlier, config=cfg, seed=seed,
                        progress=progress)

    def load_prior(self, path_for, model, config) -> Detection | None:
        path = path_for(ScanResult.ARTIFACT_SUFFIX)
        if not path.exists():
            return None
        return self.detection(ScanResult.load(path, model, config.device))


DRMGuardDetector = DRMGuardMitigator = DRMGuard  # the names of the two earlier classes


def make_detector(profile: str = "cpu", task: str = "gaze", **overrides) -> DRMGuard:
    return DRMGuard(profile, task, **overrides)


def make_mitigator(profile: str = "cpu", task: str = "gaze", **overrides) -> DRMGuard:
    return DRMGuard(profile, task, **overrides)


__all__ = ["scan", "mitigate", "ScanResult", "DRMGuardConfig", "default_config",
           "make_detector", "make_mitigator", "DRMGuard", "DRMGuardDetector", "DRMGuardMitigator",
           "SCHEMA", "STATUS_BACKDOORED", "STATUS_BENIGN", "STATUS_NO_TRIGGER"]
