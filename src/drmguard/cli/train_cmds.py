"""`drmguard train`, `drmguard eval` and `drmguard export`."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import inputs
from ..errors import DrmguardError
from ..models.io import save_model
from ..profiles import get_profile
from ..tasks import get_task
from ..training import evaluate, train_regressor
from . import model_opts as mo
from .common import ProfileOpt, QuietOpt, SeedOpt, ensure_new_path, write_json


task_for = inputs.task_for  # the library's (drmguard.inputs); kept here for callers


def load_training_data(data: str, task_name: str | None, profile, quiet: bool):
    """:func:`drmguard.inputs.load_training_data` with the CLI's ``quiet``."""
    return inputs.load_training_data(data, task_name, profile, progress=not quiet)


def train(data: str = typer.Option(..., help="Training data spec (folder, .npz, name:PATH)."),
          out: Path = typer.Option(..., help="Output model directory."),
          arch: str = typer.Option("", help="Architecture (default: the profile's)."),
          task: str = typer.Option(None, help="gaze, headpose or generic (default: data's)."),
          profile: str = ProfileOpt, seed: int = SeedOpt,
          epochs: int = typer.Option(0, help="Override the profile's epochs."),
          quiet: bool = QuietOpt):
    """Train a benign regression model."""
    prof = get_profile(profile)
    ensure_new_path(out, "model directory")
    ds, t = load_training_data(data, task, prof, quiet)
    cfg = prof.train_config(t.name, seed)
    if epochs:
        cfg.epochs, cfg.steps = epochs, None
    arch_name = arch or prof.arch
    model, meta = train_regressor(ds, t, arch_name, cfg,
                                  prof.arch_kwargs if arch_name == prof.arch else {},
                                  progress=not quiet)
    meta["profile"] = prof.name
    save_model(model, out, meta)
    typer.echo(f"trained {arch_name} on {len(ds)} images ({meta['history']['seconds']:.0f} s); "
               f"saved to {out}")


def eval_cmd(model_dir: str = typer.Argument(..., help="Model directory or file."),
             data: str = typer.Option(..., help="Evaluation data spec."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON."),
             attack_metrics: bool = typer.Option(False, "--attack-metrics",
                                                 help="Also RE, AE, DAE, RNV, RAV against the "
                                                      "model's recorded trigger."),
             task: str = mo.TaskOpt, error: str = mo.ErrorOpt, columns: str = mo.ColumnsOpt,
             arch: str = mo.ArchOpt, weights: str = mo.WeightsOpt,
             input_size: str = mo.InputSizeOpt, mean: str = mo.MeanOpt, std: str = mo.StdOpt,
             feature_layer: str = mo.FeatureLayerOpt, allow_pickle: bool = mo.AllowPickleOpt,
             quiet: bool = QuietOpt):
    """Mean regression error of a model on a dataset (and per-target errors)."""
    model, meta = mo.load_model_from_cli(model_dir, allow_pickle, arch, weights, input_size,
                                         mean, std, feature_layer, task)
    mo.echo_notes(meta, quiet)
    ds, t = mo.load_data_for_model(data, model, task, error, columns, meta=meta, quiet=quiet)
    result = {"model": str(model_dir), "data": data, "task": t.name, **evaluate(model, ds, t)}
    if attack_metrics:
        from ..attacks import load_attack
        from ..metrics import attack_metrics as compute_attack_metrics

        attack = load_attack(model_dir)
        if attack is None:
            raise DrmguardError(f"{model_dir} records no attack; --attack-metrics needs one")
        result["attack"] = compute_attack_metrics(model, attack, ds, t)
    if as_json:
        write_json(result, "-")
    else:
        typer.echo(f"{t.name} error on {result['n']} images: {result['error']:.3f} "
                   f"{result['error_units']}")
        for k, v in result["per_component"].items():
            typer.echo(f"  {k}: {v:.3f}")
        for k, v in (result.get("attack") or {}).items():
            if isinstance(v, float):
                typer.echo(f"  {k}: {v:.4f}")


EXPORT_FORMATS = ("torchscript", "onnx")


def export_cmd(model_dir: str = typer.Argument(..., help="Model directory or file."),
               fmt: str = typer.Option(..., "--format", help="torchscript or onnx."),
               out: str = typer.Option(..., help="Output file (never overwritten)."),
               task: str = mo.TaskOpt, arch: str = mo.ArchOpt, weights: str = mo.WeightsOpt,
               input_size: str = mo.InputSizeOpt, mean: str = mo.MeanOpt, std: str = mo.StdOpt,
               feature_layer: str = mo.FeatureLayerOpt,
               allow_pickle: bool = mo.AllowPickleOpt, quiet: bool = QuietOpt):
    """Export a model to TorchScript or ONNX (normalisation included; images in [0, 1]), with a
    record of its input size and task so `drmguard scan FILE` needs no options."""
    from ..models.io import export_onnx, export_torchscript, task_from_meta

    if fmt not in EXPORT_FORMATS:
        raise DrmguardError(f"unknown export format '{fmt}' (choose {', '.join(EXPORT_FORMATS)})")
    path = ensure_new_path(out, "output file")
    model, meta = mo.load_model_from_cli(model_dir, allow_pickle, arch, weights, input_size,
                                         mean, std, feature_layer, task)
    mo.echo_notes(meta, quiet)
    t = get_task(task) if task else task_from_meta(meta)
    (export_torchscript if fmt == "torchscript" else export_onnx)(model, path, task=t)
    if not quiet:
        typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(eval_cmd)
    app.command("export")(export_cmd)
