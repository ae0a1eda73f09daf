"""`drmguard data ...`: make, preview, split and convert datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from ..data import load_dataset, save_folder, save_npz, split_dataset
from ..errors import DrmguardError
from .common import QuietOpt, SeedOpt, ensure_new_path, parse_floats

data_app = typer.Typer(no_args_is_help=True, help="Make, preview, split and convert datasets.")


def _write(ds, out: Path, fmt: str, quiet: bool) -> Path:
    if fmt == "folder":
        return save_folder(ds, out, progress=not quiet)
    if fmt == "npz":
        return save_npz(ds, out)
    raise DrmguardError(f"unknown format '{fmt}' (folder or npz)")


OutOpt = typer.Option(..., help="Output folder (or .npz file with --format npz).")
FormatOpt = typer.Option("folder", "--format", help="folder or npz.")


@data_app.command("synth")
def synth(task: str = typer.Option("gaze", help="gaze or headpose."),
          n: int = typer.Option(2000, help="Number of images."),
          size: int = typer.Option(32, help="Image side (divisible by 8)."),
          subjects: int = typer.Option(20, help="Number of synthetic subjects."),
          seed: int = SeedOpt,
          out: Path = OutOpt,
          fmt: str = FormatOpt,
          split: str = typer.Option("", help="Also split, e.g. 0.8,0.1,0.1: writes "
                                              "OUT/train, OUT/benign, OUT/test (by subject)."),
          quiet: bool = QuietOpt):
    """Generate the built-in synthetic gaze or head-pose dataset."""
    from ..data.synthetic import synth_gaze, synth_headpose

    makers = {"gaze": synth_gaze, "headpose": synth_headpose}
    if task not in makers:
        raise DrmguardError(f"synthetic data exists for gaze and headpose, not '{task}'")
    if n < 1 or subjects < 1:
        raise DrmguardError("--n and --subjects must be positive")
    ensure_new_path(out)
    ds = makers[task](n, size=size, subjects=subjects, seed=seed, progress=not quiet)
    _write_all_or_split(ds, out, fmt, split, by_subject=True, seed=seed, quiet=quiet)


@data_app.command("digits")
def digits(size: int = typer.Option(16, help="Image side (8 is the native size; divisible by "
                                             "8 for training)."),
           channels: int = typer.Option(3, help="1 (grey) or 3 (grey repeated as RGB)."),
           seed: int = SeedOpt,
           out: Path = OutOpt,
           fmt: str = FormatOpt,
           split: str = typer.Option("", help="Also split, e.g. 0.7,0.1,0.2: writes "
                                              "OUT/train, OUT/benign, OUT/test (by sample)."),
           quiet: bool = QuietOpt):
    """Write scikit-learn's bundled handwritten digits (1,797 real 8×8 images, 10 classes; no
    download) as a classification dataset: class indices in labels.csv / .npz."""
    from ..data.digits import load as load_digits

    if size < 1:
        raise DrmguardError("--size must be positive")
    ensure_new_path(out)
    ds = load_digits(size=size, channels=channels)
    _write_all_or_split(ds, out, fmt, split, by_subject=False, seed=seed, quiet=quiet)


def _write_all_or_split(ds, out: Path, fmt: str, split: str, by_subject: bool, seed: int,
                        quiet: bool) -> None:
    """Write ``ds`` to OUT, or with ``split`` its train/benign/test parts to OUT/<part>."""
    if not split:
        typer.echo(f"wrote {len(ds)} images to {_write(ds, out, fmt, quiet)}")
        return
    parts = split_dataset(ds, parse_floats(split, "--split"), by_subject=by_subject, seed=seed)
    for name, part in (("train", parts.train), ("benign", parts.benign), ("test", parts.test)):
        target = out / name if fmt == "folder" else out / f"{name}.npz"
        _write(part, target, fmt, quiet)
        typer.echo(f"wrote {len(part)} images to {target}")


@data_app.command("split")
def split_cmd(data: str = typer.Argument(..., help="Dataset spec (folder, .npz, name:PATH)."),
              out: Path = typer.Option(..., help="Output folder for train/, benign/, test/."),
              ratios: str = typer.Option("0.8,0.1,0.1", help="train,benign,test ratios."),
              by_subject: bool = typer.Option(False, help="Split by subject, not by sample."),
              seed: int = SeedOpt, quiet: bool = QuietOpt):
    """Split a dataset into training set, defender's benign set D_b and test set."""
    ensure_new_path(out)
    parts = split_dataset(load_dataset(data, progress=not quiet), parse_floats(ratios, "--ratios"),
                          by_subject=by_subject, seed=seed)
    for name in ("train", "benign", "test"):
        part = getattr(parts, name)
        save_folder(part, out / name, progress=not quiet)
        typer.echo(f"{name}: {len(part)} images -> {out / name}")


@data_app.command("preview")
def preview(data: str = typer.Argument(..., help="Dataset spec."),
            out: Path = typer.Option(Path("preview.png"), help="Output PNG."),
            n: int = typer.Option(16, help="Number of images."),
            seed: int = SeedOpt):
    """Write a labelled grid of images."""
    from ..data.preview import preview_grid

    if out.exists():
        raise DrmguardError(f"{out} already exists; choose another --out")
    typer.echo(f"wrote {preview_grid(load_dataset(data, progress=False), str(out), n=n, seed=seed)}")


@data_app.command("convert")
def convert(src: str = typer.Argument(..., help="Dataset spec, e.g. biwi:/data/hpdb."),
            out: Path = typer.Option(..., help="Output folder (or .npz with --format npz)."),
            size: int = typer.Option(0, help="Resize images to SIZE×SIZE (0 keeps them)."),
            fmt: str = typer.Option("folder", "--format", help="folder or npz."),
            quiet: bool = QuietOpt):
    """Convert any supported dataset to drmguard's folder (or npz) format."""
    ensure_new_path(out)
    ds = load_dataset(src, size=size or None, progress=not quiet)
    typer.echo(f"wrote {len(ds)} images to {_write(ds, out, fmt, quiet)}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
