"""Options shared by every command that takes a model and labelled data (scan, mitigate, eval).

A command declares the options it needs from the constants below and hands their values to
:func:`load_model_from_cli` and :func:`load_data_for_model`::

    def scan(model: str = ModelArg, data: str = DataOpt, task: str = TaskOpt,
             error: str = ErrorOpt, columns: str = ColumnsOpt, arch: str = ArchOpt,
             weights: str = WeightsOpt, input_size: str = InputSizeOpt, mean: str = MeanOpt,
             std: str = StdOpt, feature_layer: str = FeatureLayerOpt,
             allow_pickle: bool = AllowPickleOpt, quiet: bool = QuietOpt, ...):
        net, meta = load_model_from_cli(model, allow_pickle, arch, weights, input_size, mean,
                                        std, feature_layer, task)
        echo_notes(meta, quiet)
        benign, t = load_data_for_model(data, net, task, error, columns, meta=meta,
                                        quiet=quiet, min_samples=10)
"""

from __future__ import annotations

import copy
from typing import Optional

import typer

from ..data import load_dataset
from ..data.base import ArrayDataset
from ..errors import DrmguardError
from ..models.io import load_model
from ..models.split import RegressionModel
from ..tasks import TASK_NAMES, Task, get_task
from .common import parse_floats

ModelArg = typer.Argument(
    ..., metavar="MODEL",
    help="The model: a drmguard model directory, a TorchScript (.pt) or ONNX (.onnx) file, a "
         "weights file (.safetensors or a torch.save state dict) with --arch, or a pickled "
         "module with --allow-pickle.")
DataOpt = typer.Option(..., "--data", help="Labelled images: a folder with labels.csv, a .npz "
                                           "file, or name:PATH for a supported dataset.")
TaskOpt = typer.Option(None, "--task", help="gaze (yaw, pitch in radians; angular error), "
                                            "headpose (yaw, pitch, roll in degrees) or generic "
                                            "(any K outputs). Default: the model's, else the "
                                            "data's.")
ErrorOpt = typer.Option(None, "--error", help="Instead of --task: angular (gaze yaw/pitch), "
                                              "mae or l1 (mean absolute error, any outputs).")
ColumnsOpt = typer.Option(None, "--columns", help="Target columns of labels.csv, in the "
                                                  "model's output order, e.g. yaw,pitch.")
ArchOpt = typer.Option(None, "--arch", help="Architecture of a weights file: your code as "
                                            "module:factory (imported from the current directory "
                                            "or PYTHONPATH) or a built-in name.")
WeightsOpt = typer.Option(None, "--weights", help="Weights file for --arch (default: MODEL).")
InputSizeOpt = typer.Option(None, "--input-size", help="Model input as H,W or C,H,W (needed "
                                                       "when the file does not record it).")
MeanOpt = typer.Option(None, "--mean", help="Per-channel mean the model subtracts from [0,1] "
                                            "images, e.g. 0.485,0.456,0.406.")
StdOpt = typer.Option(None, "--std", help="Per-channel std the model divides by.")
FeatureLayerOpt = typer.Option(None, "--feature-layer",
                               help="Name of the final linear layer (F2), when it is not found "
                                    "automatically.")
AllowPickleOpt = typer.Option(False, "--allow-pickle",
                              help="Allow pickled model files (they can run code: only for "
                                   "files you trust).")

ERRORS = {"angular": "gaze", "mae": None, "l1": None}


def _floats(text: str | None, what: str) -> list[float] | None:
    return None if text in (None, "") else parse_floats(text, what)


def load_model_from_cli(path: str, allow_pickle: bool = False, arch: Optional[str] = None,
                        weights: Optional[str] = None, input_size: Optional[str] = None,
                        mean: Optional[str] = None, std: Optional[str] = None,
                        feature_layer: Optional[str] = None,
                        task: Optional[str] = None) -> tuple[RegressionModel, dict]:
    """Parse the model options and load the model (see :func:`drmguard.models.io.load_model`)."""
    if task is not None and task not in TASK_NAMES:
        get_task(task)  # raises the standard "unknown task" message
    return load_model(path, allow_pickle=allow_pickle, arch=arch or None,
                      weights=weights or None, input_size=input_size or None,
                      mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                      feature_layer=feature_layer or None,
                      task=task if task in ("gaze", "headpose") else None)


def echo_notes(meta: dict, quiet: bool = False) -> None:
    """Show the loader's assumptions (e.g. normalisation) on stderr."""
    if quiet:
        return
    for note in meta.get("notes") or []:
        typer.echo(f"note: {note}", err=True)


def resolve_task(task: Optional[str], error: Optional[str], num_outputs: int,
                 model_meta: dict | None = None, ds: ArrayDataset | None = None) -> Task:
    """The task from --task / --error, else the model's record, else the data's, else generic."""
    if error is not None:
        if error not in ERRORS:
            raise DrmguardError(f"unknown --error '{error}' (choose angular, mae or l1)")
        implied = ERRORS[error]
        if task is not None and implied is not None and task != implied:
            raise DrmguardError(f"--error {error} means task {implied}, not {task}")
        if task == "gaze" and implied is None:
            raise DrmguardError("gaze models are scored by angular error: drop --error or use "
                                "--error angular")
        task = task or implied or "generic"
    if task is None:
        recorded = (model_meta or {}).get("task") or {}
        task = recorded.get("name") if isinstance(recorded, dict) else None
    if task is None and ds is not None and ds.task in TASK_NAMES:
        task = ds.task
    task = task or "generic"
    if task == "generic":
        names = ds.target_names if ds is not None and ds.target_names and \
            len(ds.target_names) == num_outputs else None
        return get_task("generic", dim=num_outputs, target_names=names)
    t = get_task(task)
    if t.dim != num_outputs:
        raise DrmguardError(f"task {t.name} has {t.dim} outputs ({', '.join(t.target_names)}) "
                            f"but the model outputs {num_outputs}; pass --task generic")
    return t


def parse_columns(columns: Optional[str]) -> list[str] | None:
    """``"yaw,pitch"`` -> ["yaw", "pitch"] (None when not given)."""
    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    if columns is not None and not cols:
        raise DrmguardError("--columns is empty")
    if cols and len(set(cols)) != len(cols):
        raise DrmguardError(f"--columns names a column twice: {columns}")
    return cols


def load_labelled(data_spec: str, columns: Optional[str] = None,
                  quiet: bool = False) -> ArrayDataset:
    """The labelled images of ``data_spec`` with the ``columns`` chosen (not yet fitted to a
    model; every image of a folder has one size, or loading fails with a clear message)."""
    return load_dataset(data_spec, columns=parse_columns(columns), progress=not quiet)


def load_data_for_model(data_spec: str | ArrayDataset, model: RegressionModel,
                        task: Optional[str] = None,
                        error: Optional[str] = None, columns: Optional[str] = None,
                        meta: dict | None = None, quiet: bool = False,
                        min_samples: int = 1, multiple_of: int | None = None
                        ) -> tuple[ArrayDataset, Task]:
    """Load labelled images fitted to ``model``: targets selected and checked, images resized.

    ``columns`` ("yaw,pitch") selects and orders target columns. Checks: the channel count, the
    target width (= the model's outputs), at least ``min_samples`` images, and optionally an
    input size divisible by ``multiple_of``. Returns the dataset (task set, images at the model's
    input size) and the task. ``data_spec`` may be a dataset loaded already by
    :func:`load_labelled` (its columns chosen); it is not modified.
    """
    if isinstance(data_spec, ArrayDataset):
        ds = copy.copy(data_spec)
        data_spec = "the data"
    else:
        ds = load_labelled(data_spec, columns, quiet)
    if len(ds) < min_samples:
        raise DrmguardError(f"{data_spec} has {len(ds)} labelled images; at least {min_samples} "
                            "are needed")
    if ds.channels != model.in_channels:
        kind = {1: "grayscale", 3: "RGB"}
        raise DrmguardError(
            f"the images have {ds.channels} channel(s) ({kind.get(ds.channels, '?')}) but the "
            f"model takes {model.in_channels} ({kind.get(model.in_channels, '?')}); convert the "
            "images or pass --input-size C,H,W if the model's channel count was guessed")
    if ds.target_dim != model.num_outputs:
        names = ", ".join(ds.target_names or [])
        raise DrmguardError(f"the data has {ds.target_dim} target(s) ({names}) but the model "
                            f"outputs {model.num_outputs}; choose them with --columns")
    h, w = model.input_size
    if multiple_of and (h % multiple_of or w % multiple_of):
        raise DrmguardError(f"the model's input size {h}×{w} must be divisible by {multiple_of}")
    t = resolve_task(task, error, model.num_outputs, meta, ds)
    ds = copy.copy(ds.resized(model.input_size))
    ds.task = t.name
    if t.name != "generic":
        ds.target_names = list(t.target_names)
    return ds, t
