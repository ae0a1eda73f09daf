"""Models: architecture registry, the F1/F2 split, and safe model files."""

from .registry import ARCHS, build_model
from .split import RegressionModel, find_head

__all__ = ["ARCHS", "build_model", "RegressionModel", "find_head"]
