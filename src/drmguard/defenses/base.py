"""The common defence interface: every detector yields a score per model, every mitigator a
repaired model. Experiments use only this interface (``get_detector`` / ``get_mitigator``).

Score convention: **higher score = more likely backdoored** (so ROC-AUC is computed on it
directly). A defence whose natural statistic runs the other way (DRMGuard's R, Neural
Cleanse's mask norm) reports its negation as ``score`` and the raw value in ``details``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
import time
from typing import ClassVar

import torch

from ..data.base import ArrayDataset
from ..errors import DrmguardError
from ..registry import Lazy, Registry
from ..models.split import RegressionModel
from ..tasks import Task
from ..utils import resolve_device


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

    def save_artifacts(self, path_for) -> list:
        """Write what the in-memory ``result`` keeps beyond the JSON record (e.g. DRMGuard's
        reversed trigger) through its own ``save_artifacts(path_for)`` hook, where it has one;
        ``path_for(suffix)`` names each file. Returns the paths written."""
        hook = getattr(self.result, "save_artifacts", None)
        return list(hook(path_for)) if hook is not None else []


class Defence:
    """Base class of every defence (DRMGuard and the baselines), in the manner of ART's
    estimators: one config dataclass, defaults resolved in one place, checked options, and
    template ``detect``/``mitigate`` methods.

    A subclass sets

    - ``name`` (its registry name), ``title`` (for messages) and ``config_class`` (a dataclass);
    - ``profile_defaults`` {profile: {option: value}}, ``task_defaults`` {task: {...}} (the
      ``"generic"`` entry also serves unknown tasks) and ``profile_task_defaults``
      {(profile, task): {...}}: :meth:`resolve` applies the dataclass defaults, then the
      profile's, the task's, the (profile, task)'s and the caller's overrides, in that order.
      A registered profile a defence has no entry for runs it with its dataclass defaults;
    - ``option_aliases`` {old spelling: option} for renamed options, ``stored_names`` {option:
      key} where the option's value is stored (cache keys, result records) under an older key;
    - ``_detect(model, benign, task, cfg, seed, progress) -> Detection`` and/or
      ``_mitigate(model, benign, task, cfg, seed, progress, prior) -> (model, info)``.

    The templates check the inputs (:meth:`check_inputs`, at least ``min_samples`` images), pick
    the config for the task, time the run, and never touch the caller's model (the
    subclass works on :meth:`working_copy`). Results are always returned, never kept on the
    object.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    config_class: ClassVar[type]
    profile_defaults: ClassVar[dict[str, dict]] = {}
    task_defaults: ClassVar[dict[str, dict]] = {}
    profile_task_defaults: ClassVar[dict[tuple[str, str], dict]] = {}
    option_aliases: ClassVar[dict[str, str]] = {}
    stored_names: ClassVar[dict[str, str]] = {}
    min_samples: ClassVar[int] = 2
    # a defence that can measure a given trigger the way its rule would (DRMGuard: R and the
    # collapse of the real trigger) names the cached record of that measurement here
    trigger_cost_run: ClassVar[str | None] = None
    # whether the defence handles classifiers (task ``classification``): DRMGuard (softmax
    # outputs, Appendix A.9) and Neural Cleanse (its original per-class form) do; the
    # regression-generalised baselines refuse them
    supports_classification: ClassVar[bool] = False

    def __init__(self, profile: str = "cpu", task: str = "gaze", **overrides):
        self.profile, self.task = profile, task.name if isinstance(task, Task) else task
        self.overrides = self.canonical_options(overrides)
        self.config = self.resolve(self.profile, self.task, **self.overrides)  # validates

    # --- configuration ------------------------------------------------------------------
    @classmethod
    def canonical_options(cls, options: dict) -> dict:
        """``options`` with renamed spellings mapped to the current option names; unknown
        names raise one error listing the valid ones."""
        out = {cls.option_aliases.get(k, k): v for k, v in options.items()}
        valid = {f.name for f in fields(cls.config_class)}
        bad = sorted(set(out) - valid)
        if bad:
            raise DrmguardError(f"unknown option(s) {', '.join(bad)} for {cls.title or cls.name}"
                                f" (valid: {', '.join(sorted(valid))})")
        return out

    @classmethod
    def resolve(cls, profile: str, task: str, **overrides):
        """The config for (profile, task) with ``overrides``: the one place where defaults are
        resolved (see the class docstring)."""
        from ..profiles import get_profile

        get_profile(profile)  # unknown profiles: the profile registry's error
        overrides = cls.canonical_options(overrides)
        values = dict(cls.profile_defaults.get(profile, {}))
        values.update(cls.task_defaults.get(task, cls.task_defaults.get("generic", {})))
        values.update(cls.profile_task_defaults.get((profile, task), {}))
        names = {f.name for f in fields(cls.config_class)}
        for key, value in (("profile", profile), ("task", task)):
            if key in names:
                values[key] = value
        values.update(overrides)
        return cls.config_class(**values)

    def config_for(self, task: Task | str):
        """The config this defence runs with on ``task`` (each task may have its own
        defaults; the overrides apply to every task)."""
        name = task.name if isinstance(task, Task) else task
        if name == self.task:
            return self.config
        return self.resolve(self.profile, name, **self.overrides)

    def set_params(self, **params) -> "Defence":
        """Change options (checked like the constructor's); returns ``self``."""
        overrides = {**self.overrides, **self.canonical_options(params)}
        self.config = self.resolve(self.profile, self.task, **overrides)
        self.overrides = overrides
        return self

    @classmethod
    def config_dict(cls, config) -> dict:
        """``config`` as a JSON-safe dict, options stored under their recorded keys
        (``stored_names``): the form hashed into cache keys and written into results."""
        d = config.to_dict() if hasattr(config, "to_dict") else asdict(config)
        return {cls.stored_names.get(k, k): v for k, v in d.items()}

    @classmethod
    def config_from_dict(cls, d: dict):
        """The config back from :meth:`config_dict`."""
        back = {v: k for k, v in cls.stored_names.items()}
        return cls.config_class(**{back.get(k, k): v for k, v in d.items()})

    # --- capabilities ---------------------------------------------------------------------
    @classmethod
    def can_detect(cls) -> bool:
        return cls._detect is not Defence._detect

    @classmethod
    def can_mitigate(cls) -> bool:
        return cls._mitigate is not Defence._mitigate

    # --- templates ------------------------------------------------------------------------
    def check_inputs(self, model, benign: ArrayDataset, task: Task) -> None:
        """Common validation of (model, D_b, task); a subclass may check more."""
        from . import _common as C

        if task.is_classification and not self.supports_classification:
            raise DrmguardError(f"{self.title or self.name} is generalised to regression only; "
                                "for classifiers use drmguard or neural_cleanse "
                                "(docs/classification.md)")

        C.check_inputs(model, benign, task, min_samples=self.min_samples)

    @staticmethod
    def device(config) -> torch.device:
        return resolve_device(getattr(config, "device", "auto"))

    def working_copy(self, model: RegressionModel, config, frozen: bool = False
                     ) -> RegressionModel:
        """A deep copy of ``model`` on the config's device (frozen: eval mode, no gradients);
        the caller's model is never modified."""
        m = copy.deepcopy(model).to(self.device(config))
        if frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        return m

    def detect(self, model: RegressionModel, benign: ArrayDataset, task: Task,
               seed: int = 0, progress: bool = True) -> Detection:
        """Score ``model`` on the defender's benign set: a :class:`Detection` (higher score =
        more likely backdoored)."""
        if not self.can_detect():
            raise DrmguardError(f"{self.title or self.name} is a mitigation, not a detector")
        cfg = self.config_for(task)
        t0 = time.perf_counter()
        self.check_inputs(model, benign, task)
        det = self._detect(model, benign, task, cfg, seed, progress)
        if not det.seconds:
            det.seconds = time.perf_counter() - t0
        return det

    def mitigate(self, model: RegressionModel, benign: ArrayDataset, task: Task,
                 seed: int = 0, progress: bool = True, prior: Detection | None = None
                 ) -> tuple[RegressionModel, dict]:
        """A repaired copy of ``model`` and a JSON-safe record of the repair. ``prior``: a
        detection of this model by the same defence, which a mitigation may reuse (DRMGuard
        fine-tunes against its reversed trigger instead of scanning again)."""
        if not self.can_mitigate():
            raise DrmguardError(f"{self.title or self.name} is a detector, not a mitigation")
        cfg = self.config_for(task)
        self.check_inputs(model, benign, task)
        return self._mitigate(model, benign, task, cfg, seed, progress, prior)

    def _detect(self, model, benign, task, cfg, seed, progress) -> Detection:
        raise NotImplementedError

    def _mitigate(self, model, benign, task, cfg, seed, progress, prior):
        raise NotImplementedError

    def trigger_cost(self, model, images: torch.Tensor, trigger) -> dict:
        """What this defence's rule sees in ``trigger`` (a function x -> x') applied to the
        benign ``images``; only for a defence with ``trigger_cost_run``."""
        raise NotImplementedError

    # --- artifacts kept beside a cached detection (experiments) -----------------------------
    def load_prior(self, path_for, model, config) -> Detection | None:
        """The detection whose artifacts :meth:`Detection.save_artifacts` wrote (``path_for``
        maps a file suffix to its path), or None; a defence with artifacts overrides this."""
        return None


# Kept for type hints of older callers: every defence is a Defence.
Detector = Mitigator = Defence


# name -> factory (profile: str, task: str, **overrides), imported on first use.
DETECTORS: Registry = Registry("detector")
DETECTORS.register("drmguard", Lazy("drmguard.defenses.drmguard:make_detector"))
DETECTORS.register("nc", Lazy("drmguard.defenses.neural_cleanse:make_detector"),
                   aliases=("neural_cleanse",))
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


def resolved_config(defense: Defence, task: Task | str) -> dict:
    """The full settings a detector or mitigator will run with on ``task`` (defaults and
    overrides resolved), for cache keys and result records."""
    return defense.config_dict(defense.config_for(task))
