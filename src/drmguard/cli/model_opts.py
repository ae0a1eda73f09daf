"""Options shared by every command that takes a model and labelled data (scan, mitigate, eval):
the flags and their parsing; what they do is the library's (:mod:`drmguard.inputs`,
:mod:`drmguard.api`).

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

from typing import Optional

import typer

from .. import inputs
from ..data.base import ArrayDataset
from ..models.io import load_model
from ..models.split import RegressionModel
from ..tasks import TASK_NAMES, Task, get_task
from .common import flag_names, parse_floats

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

ERRORS = inputs.ERRORS


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
        typer.echo(f"note: {flag_names(note)}", err=True)


resolve_task = inputs.resolve_task  # the library's (drmguard.inputs); kept here for callers
parse_columns = inputs.parse_columns


def load_labelled(data_spec: str, columns: Optional[str] = None,
                  quiet: bool = False) -> ArrayDataset:
    """:func:`drmguard.inputs.load_labelled` with the CLI's ``quiet``."""
    return inputs.load_labelled(data_spec, columns, progress=not quiet)


def load_data_for_model(data_spec: str | ArrayDataset, model: RegressionModel,
                        task: Optional[str] = None, error: Optional[str] = None,
                        columns: Optional[str] = None, meta: dict | None = None,
                        quiet: bool = False, min_samples: int = 1,
                        multiple_of: int | None = None) -> tuple[ArrayDataset, Task]:
    """:func:`drmguard.inputs.load_data_for_model` with the CLI's ``quiet``."""
    return inputs.load_data_for_model(data_spec, model, task, error, columns, meta=meta,
                                      progress=not quiet, min_samples=min_samples,
                                      multiple_of=multiple_of)
