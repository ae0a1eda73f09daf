"""drmguard: find and remove backdoors in deep regression models.

The Python API (imported on first use, so ``import drmguard`` stays cheap)::

    import drmguard
    model, meta = drmguard.load_model("gaze.pt")
    result = drmguard.scan(model, "benign/", task="gaze")          # a ScanResult
    drmguard.write_report(result, "report/")
    cleaned, info = drmguard.mitigate(model, "benign/", prior=result)

``scan``, ``detect``, ``mitigate``, ``prepare``, ``load_model``, ``save_model``,
``load_dataset``, ``get_task``, ``write_report`` (:mod:`drmguard.api`); the registries
``ARCHS``, ``ATTACKS``, ``DETECTORS``, ``MITIGATORS``, ``TASKS``, ``DATASETS``, ``PROFILES``;
``get_detector``, ``get_mitigator``, ``make_attack``, ``get_profile``; ``DrmguardError``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    **{name: "drmguard.api" for name in ("scan", "detect", "mitigate", "prepare", "load_model",
                                          "save_model", "load_dataset", "get_task",
                                          "write_report")},
    "DrmguardError": "drmguard.errors",
    "ARCHS": "drmguard.models.registry", "ATTACKS": "drmguard.attacks",
    "DETECTORS": "drmguard.defenses.base", "MITIGATORS": "drmguard.defenses.base",
    "TASKS": "drmguard.tasks", "DATASETS": "drmguard.data", "PROFILES": "drmguard.profiles",
    "get_detector": "drmguard.defenses.base", "get_mitigator": "drmguard.defenses.base",
    "make_attack": "drmguard.attacks", "get_profile": "drmguard.profiles",
    "Defence": "drmguard.defenses.base", "Detection": "drmguard.defenses.base",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'drmguard' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
