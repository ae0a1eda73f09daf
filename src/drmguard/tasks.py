"""Regression tasks: output dimension, target names and units, training loss and regression error.

- ``gaze``: target (yaw, pitch) in radians; loss L1; error = angle between the 3-D gaze vectors,
  in degrees. Angle <-> vector conversion follows the convention of MPIIFaceGaze tools (camera
  looks along +z, gaze points back towards the camera): x = -cos(p) sin(y), y = -sin(p),
  z = -cos(p) cos(y).
- ``headpose``: target (yaw, pitch, roll) in degrees; loss L1; error = mean absolute error over
  the three angles, in degrees.
- ``generic``: any K outputs; loss L1; error = mean absolute error over the K outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import DrmguardError
from .registry import Registry


def gaze_to_vector(yaw_pitch):
    """(…, 2) yaw/pitch in radians -> (…, 3) unit gaze vectors. Works on numpy or torch."""
    lib = torch if isinstance(yaw_pitch, torch.Tensor) else np
    yaw, pitch = yaw_pitch[..., 0], yaw_pitch[..., 1]
    return lib.stack([-lib.cos(pitch) * lib.sin(yaw), -lib.sin(pitch),
                      -lib.cos(pitch) * lib.cos(yaw)], -1)


def vector_to_gaze(v):
    """(…, 3) gaze vectors (any length) -> (…, 2) yaw/pitch in radians. Numpy or torch."""
    lib = torch if isinstance(v, torch.Tensor) else np
    n = lib.sqrt((v * v).sum(-1))
    x, y, z = v[..., 0] / n, v[..., 1] / n, v[..., 2] / n
    pitch = lib.arcsin(lib.clip(-y, -1.0, 1.0)) if lib is np else torch.asin((-y).clamp(-1, 1))
    yaw = lib.arctan2(-x, -z) if lib is np else torch.atan2(-x, -z)
    return lib.stack([yaw, pitch], -1)


def angular_error_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample angle in degrees between gaze directions given as (yaw, pitch) radians."""
    a, b = gaze_to_vector(pred.double()), gaze_to_vector(target.double())
    cos = (a * b).sum(-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos)).to(pred.dtype)


def mean_abs_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute error over the output components."""
    return (pred - target).abs().mean(-1)


@dataclass(frozen=True)
class Task:
    name: str
    dim: int
    target_names: tuple[str, ...]
    units: str
    error_units: str

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss (L1, mean over batch and components)."""
        return (pred - target).abs().mean()

    def error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample regression error (B,) in ``error_units``."""
        if pred.shape[-1] != self.dim or target.shape[-1] != self.dim:
            raise DrmguardError(
                f"task {self.name} expects {self.dim} outputs, got {pred.shape[-1]} and "
                f"{target.shape[-1]}")
        if self.name == "gaze":
            return angular_error_deg(pred, target)
        return mean_abs_error(pred, target)

    def component_errors(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample absolute error per component (B, K), in target units (degrees for gaze)."""
        d = (pred - target).abs()
        return torch.rad2deg(d) if self.name == "gaze" else d

    def to_dict(self) -> dict:
        return {"name": self.name, "dim": self.dim, "target_names": list(self.target_names)}


GAZE = Task("gaze", 2, ("yaw", "pitch"), "rad", "deg")
HEADPOSE = Task("headpose", 3, ("yaw", "pitch", "roll"), "deg", "deg")


def _generic(dim: int | None = None, target_names=None) -> Task:
    """The generic task with ``dim`` outputs (or one per target name)."""
    if dim is None and target_names is None:
        raise DrmguardError("the generic task needs the output dimension")
    names = tuple(target_names) if target_names else tuple(f"y{i}" for i in range(dim))
    dim = len(names) if dim is None else int(dim)
    if dim < 1 or len(names) != dim:
        raise DrmguardError(f"generic task: {len(names)} target names for {dim} outputs")
    return Task("generic", dim, names, "", "")


# name -> a Task of fixed shape, or a builder (dim, target_names) -> Task
TASKS: Registry = Registry("task", choices_text="gaze, headpose or generic")
TASKS.register("gaze", GAZE)
TASKS.register("headpose", HEADPOSE)
TASKS.register("generic", _generic)


def get_task(name: str, dim: int | None = None, target_names=None) -> Task:
    """Task by name; ``generic`` needs ``dim`` (or target names)."""
    task = TASKS.get(name)
    if not isinstance(task, Task):
        return task(dim, target_names)
    if dim is not None and int(dim) != task.dim:
        raise DrmguardError(f"task {name} has {task.dim} outputs, got data with {dim}")
    return task


def list_tasks() -> list[str]:
    return TASKS.list()


TASK_NAMES = tuple(TASKS)
