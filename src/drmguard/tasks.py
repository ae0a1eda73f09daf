"""Regression tasks: output dimension, target names and units, training loss and regression error.

- ``gaze``: target (yaw, pitch) in radians; loss L1; error = angle between the 3-D gaze vectors,
  in degrees. Angle <-> vector conversion follows the convention of MPIIFaceGaze tools (camera
  looks along +z, gaze points back towards the camera): x = -cos(p) sin(y), y = -sin(p),
  z = -cos(p) cos(y).
- ``headpose``: target (yaw, pitch, roll) in degrees; loss L1; error = mean absolute error over
  the three angles, in degrees.
- ``generic``: any K outputs; loss L1; error = mean absolute error over the K outputs.
- ``classification``: K classes; the model outputs K logits; labels are class indices on disk
  (``labels.csv`` column ``label``, or a 1-D ``targets`` array in ``.npz``) and one-hot rows of K
  values in memory (:func:`labels_to_onehot`), so splits, poisoning (a target class is a one-hot
  target vector) and every shape check work as for regression. Loss cross-entropy; error =
  misclassification (0/1 per sample, so the mean error is 1 − accuracy). DRMGuard reads the
  softmax of the logits (:meth:`Task.output_transform`, the paper's Appendix A.9).
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
    kind: str = "regression"  # or "classification" (outputs are logits; see the module doc)

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    def output_transform(self, y: torch.Tensor) -> torch.Tensor:
        """What the defences read of the model's outputs: the outputs themselves for regression,
        the softmax probabilities of the logits for classification (Appendix A.9)."""
        return torch.softmax(y, dim=-1) if self.is_classification else y

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss: L1, mean over batch and components; cross-entropy to the class of the
        one-hot ``target`` for classification."""
        if self.is_classification:
            return torch.nn.functional.cross_entropy(pred, target.argmax(-1))
        return (pred - target).abs().mean()

    def error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample regression error (B,) in ``error_units``; for classification 1 where the
        predicted class (argmax) is not the target's, else 0."""
        if pred.shape[-1] != self.dim or target.shape[-1] != self.dim:
            raise DrmguardError(
                f"task {self.name} expects {self.dim} outputs, got {pred.shape[-1]} and "
                f"{target.shape[-1]}")
        if self.is_classification:
            return (pred.argmax(-1) != target.argmax(-1)).to(pred.dtype)
        if self.name == "gaze":
            return angular_error_deg(pred, target)
        return mean_abs_error(pred, target)

    def component_errors(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample absolute error per component (B, K), in target units (degrees for gaze;
        for classification between the softmax probabilities and the one-hot target)."""
        if self.is_classification:
            return (self.output_transform(pred) - target).abs()
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


def _classification(dim: int | None = None, target_names=None) -> Task:
    """The classification task with ``dim`` classes (or one per class name)."""
    if dim is None and target_names is None:
        raise DrmguardError("the classification task needs the number of classes")
    names = tuple(str(n) for n in target_names) if target_names else \
        tuple(str(i) for i in range(dim))
    dim = len(names) if dim is None else int(dim)
    if dim < 2 or len(names) != dim:
        raise DrmguardError(f"classification task: {len(names)} class names for {dim} classes "
                            "(at least 2 classes)")
    return Task("classification", dim, names, "class", "error rate", kind="classification")


def labels_to_onehot(labels, num_classes: int, source: str = "the labels") -> np.ndarray:
    """Class indices (N or N×1, integers 0..K−1) -> one-hot float32 N×K; a label that is not
    an integer in range raises one error naming the first offending row."""
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DrmguardError(f"{source}: classification labels must be one class index per "
                            f"image, got shape {y.shape}")
    if int(num_classes) < 2:
        raise DrmguardError(f"{source}: classification needs at least 2 classes, got "
                            f"{num_classes}")
    bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)) | (y < 0) | (y >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DrmguardError(f"{source}: label {y[i]:g} of row {i} is not a class index in "
                            f"0..{int(num_classes) - 1} ({len(bad)} bad label(s))")
    out = np.zeros((len(y), int(num_classes)), np.float32)
    out[np.arange(len(y)), y.astype(np.int64)] = 1.0
    return out


def is_onehot(targets: np.ndarray) -> bool:
    t = np.asarray(targets)
    return t.ndim == 2 and t.shape[1] >= 2 and bool(np.isin(t, (0.0, 1.0)).all()) and \
        bool((t.sum(1) == 1).all())


# name -> a Task of fixed shape, or a builder (dim, target_names) -> Task
TASKS: Registry = Registry("task", choices_text="gaze, headpose, generic or classification")
TASKS.register("gaze", GAZE)
TASKS.register("headpose", HEADPOSE)
TASKS.register("generic", _generic)
TASKS.register("classification", _classification)


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
