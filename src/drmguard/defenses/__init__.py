"""Defences: DRMGuard and the regression-generalised baselines (see base.py)."""

from .base import DETECTORS, MITIGATORS, Detection, get_detector, get_mitigator

__all__ = ["DETECTORS", "MITIGATORS", "Detection", "get_detector", "get_mitigator"]
