"""Models: architecture registry, the F1/F2 split, and safe model files."""

from .registry import ARCHS, build_model, list_models
from .split import RegressionModel, find_head

__all__ = ["ARCHS", "build_model", "list_models", "RegressionModel", "find_head"]
