"""A user's labelled images fitted to a model: which task, which target columns, which size.

The library side of ``drmguard scan / mitigate / eval / train`` (the CLI calls these): errors
name the *parameters* of these functions in backquotes (`columns`, `task`=generic); the CLI
turns them into its flags in one place (:func:`drmguard.cli.flag_names`).
"""

from __future__ import annotations

import copy

from .data import load_dataset
from .data.base import ArrayDataset
from .errors import DrmguardError
from .models.split import RegressionModel
from .tasks import TASK_NAMES, Task, get_task

# `error` = the regression error a user names instead of a task
ERRORS = {"angular": "gaze", "mae": None, "l1": None}


def parse_columns(columns: str | list[str] | None) -> list[str] | None:
    """``"yaw,pitch"`` (or a list) -> ["yaw", "pitch"]; None when not given."""
    if columns is None:
        return None
    cols = [c.strip() for c in (columns.split(",") if isinstance(columns, str) else columns)
            if c.strip()]
    if not cols:
        raise DrmguardError("`columns` is empty")
    if len(set(cols)) != len(cols):
        raise DrmguardError(f"`columns` names a column twice: {columns}")
    return cols


def load_labelled(data: str, columns: str | list[str] | None = None,
                  progress: bool = True) -> ArrayDataset:
    """The labelled images of the data spec ``data`` with the ``columns`` chosen (not yet
    fitted to a model; every image of a folder has one size, or loading fails clearly)."""
    return load_dataset(data, columns=parse_columns(columns), progress=progress)


def resolve_task(task: str | None, error: str | None, num_outputs: int,
                 model_meta: dict | None = None, ds: ArrayDataset | None = None) -> Task:
    """The task named by ``task`` / ``error``, else the model's record, else the data's, else
    generic."""
    if error is not None:
        if error not in ERRORS:
            raise DrmguardError(f"unknown `error` '{error}' (choose angular, mae or l1)")
        implied = ERRORS[error]
        if task is not None and implied is not None and task != implied:
            raise DrmguardError(f"`error` {error} means task {implied}, not {task}")
        if task == "gaze" and implied is None:
            raise DrmguardError("gaze models are scored by angular error: drop `error` or use "
                                "`error`=angular")
        task = task or implied or "generic"
    recorded = (model_meta or {}).get("task") or {}
    recorded = recorded.get("name") if isinstance(recorded, dict) else None
    if task is None:
        task = recorded
    if task is None and ds is not None and ds.task in TASK_NAMES:
        task = ds.task
    task = task or "generic"
    if ds is not None:
        check_kind(task, ds, model_meta)
    if task == "classification":
        names = ds.target_names if ds is not None and ds.target_names and \
            len(ds.target_names) == num_outputs else None
        return get_task("classification", dim=num_outputs, target_names=names)
    if task == "generic":
        names = ds.target_names if ds is not None and ds.target_names and \
            len(ds.target_names) == num_outputs else None
        return get_task("generic", dim=num_outputs, target_names=names)
    t = get_task(task)
    if t.dim != num_outputs:
        raise DrmguardError(f"task {t.name} has {t.dim} outputs ({', '.join(t.target_names)}) "
                            f"but the model outputs {num_outputs}; pass `task`=generic")
    return t


def check_kind(task: str | None, ds: ArrayDataset, model_meta: dict | None,
               data: bool = True) -> None:
    """A classifier for class labels, a regression model for regression targets: the model's
    recorded task against the requested ``task`` (else the data's), and (``data``) the data's
    kind against ``task``; one clear error."""
    recorded = (model_meta or {}).get("task") or {}
    recorded = recorded.get("name") if isinstance(recorded, dict) else None
    wanted = task or ds.task
    kinds = {True: "classifier", False: "regression model"}
    if recorded is not None and wanted in TASK_NAMES and \
            (recorded == "classification") != (wanted == "classification"):
        what = f"`task` {task} does" if task else \
            ("class labels do" if ds.task == "classification" else "regression targets do")
        raise DrmguardError(f"the model is a {kinds[recorded == 'classification']} (task "
                            f"{recorded}), not a {kinds[wanted == 'classification']}: {what} "
                            "not fit it")
    if data and task is not None and task in TASK_NAMES and ds.task in TASK_NAMES and \
            (ds.task == "classification") != (task == "classification"):
        data = "class labels" if ds.task == "classification" else "regression targets"
        raise DrmguardError(f"the data are {data} but `task` {task} is "
                            f"{'not ' if ds.task == 'classification' else ''}a classification "
                            "task")


def load_data_for_model(data: str | ArrayDataset, model: RegressionModel,
                        task: str | None = None, error: str | None = None,
                        columns: str | list[str] | None = None, meta: dict | None = None,
                        progress: bool = True, min_samples: int = 1,
                        multiple_of: int | None = None) -> tuple[ArrayDataset, Task]:
    """Labelled images fitted to ``model``: targets selected and checked, images resized.

    ``data``: a data spec, or a dataset loaded already (by :func:`load_labelled`, its columns
    chosen; it is not modified). ``columns`` ("yaw,pitch") selects and orders target columns.
    Checks: the channel count, the target width (= the model's outputs), at least
    ``min_samples`` images, and optionally an input size divisible by ``multiple_of``. Returns
    the dataset (task set, images at the model's input size) and the task.
    """
    if isinstance(data, ArrayDataset):
        ds, data = copy.copy(data), "the data"
    else:
        ds = load_labelled(data, columns, progress)
    if len(ds) < min_samples:
        raise DrmguardError(f"{data} has {len(ds)} labelled images; at least {min_samples} "
                            "are needed")
    check_kind(task, ds, meta, data=False)
    if task == "classification" and ds.task != "classification":  # class indices -> one-hot
        from .data.formats import as_classification

        ds = as_classification(ds, model.num_outputs, str(data))
    if ds.channels != model.in_channels:
        kind = {1: "grayscale", 3: "RGB"}
        raise DrmguardError(
            f"the images have {ds.channels} channel(s) ({kind.get(ds.channels, '?')}) but the "
            f"model takes {model.in_channels} ({kind.get(model.in_channels, '?')}); convert the "
            "images or pass `input_size` C,H,W if the model's channel count was guessed")
    if ds.target_dim != model.num_outputs:
        names = ", ".join(ds.target_names or [])
        raise DrmguardError(f"the data has {ds.target_dim} target(s) ({names}) but the model "
                            f"outputs {model.num_outputs}; choose them with `columns`")
    h, w = model.input_size
    if multiple_of and (h % multiple_of or w % multiple_of):
        raise DrmguardError(f"the model's input size {h}×{w} must be divisible by {multiple_of}")
    t = resolve_task(task, error, model.num_outputs, meta, ds)
    ds = copy.copy(ds.resized(model.input_size))
    ds.task = t.name
    if t.name != "generic":
        ds.target_names = list(t.target_names)
    return ds, t


def task_for(ds: ArrayDataset, task: str | None) -> Task:
    """The task named by ``task``, else the one recorded with the data (else generic)."""
    name = task or ds.task or "generic"
    return get_task(name, dim=ds.target_dim, target_names=ds.target_names
                    if name in ("generic", "classification") else None)


def load_training_data(data: str, task: str | None, profile, progress: bool = True
                       ) -> tuple[ArrayDataset, Task]:
    """Training images for ``profile`` (a :class:`~drmguard.profiles.Profile` or its name):
    resized to the profile's size for the task (except ``tiny``), divisible by 8."""
    from .profiles import get_profile

    profile = get_profile(profile) if isinstance(profile, str) else profile
    ds = load_dataset(data, progress=progress, task="classification"
                      if task == "classification" else None)
    if (ds.task == "classification") != ((task or ds.task) == "classification"):
        kind = "class labels" if ds.task == "classification" else "regression targets"
        raise DrmguardError(f"the data are {kind}, not for task {task}")
    t = task_for(ds, task)
    size = profile.size_for(t.name)
    if ds.image_size != (size, size) and profile.name != "tiny":
        ds = ds.resized((size, size))
    if ds.image_size[0] % 8 or ds.image_size[1] % 8:
        raise DrmguardError(f"image size {ds.image_size} must be divisible by 8")
    return ds, t


__all__ = ["parse_columns", "load_labelled", "resolve_task", "load_data_for_model", "task_for",
           "load_training_data", "ERRORS"]
