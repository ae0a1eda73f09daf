"""Datasets: one way to name any data source, and the native formats.

A data spec is one of
- a path to a drmguard folder (``labels.csv`` + ``meta.json``) or a ``.npz`` file;
- ``mpiifacegaze:PATH``, ``columbiagaze:PATH``, ``biwi:PATH``, ``pandora:PATH``, optionally with
  loader options as a query string, e.g. ``biwi:/data/hpdb?convention=hopenet``;
- ``digits`` (or ``digits:?size=32``): scikit-learn's bundled handwritten digits, a
  classification data set that needs no download (:mod:`.digits`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from ..errors import DrmguardError
from ..registry import Lazy, Registry
from .base import ArrayDataset, Splits, split_dataset
from .formats import load_folder, load_npz, save_folder, save_npz

# name -> the dataset's loader ``load(path, progress=..., **options) -> ArrayDataset``,
# imported on first use; the native formats (folder, .npz) need no name.
DATASETS: Registry = Registry("dataset", normalise=str.lower)
for _name in ("mpiifacegaze", "columbiagaze", "biwi", "pandora"):
    DATASETS.register(_name, Lazy(f"{__name__}.{_name}:load"))
DATASETS.register("digits", Lazy(f"{__name__}.digits:load"))
REAL_DATASETS = DATASETS
BUILTIN_DATASETS = ("digits",)  # need no path


def parse_spec(spec: str) -> tuple[str | None, str, dict]:
    """(dataset name or None for native formats, path, options)."""
    if spec.lower() in BUILTIN_DATASETS:
        return spec.lower(), "", {}
    name, sep, rest = spec.partition(":")
    if sep and name.lower() in REAL_DATASETS:
        path, _, query = rest.partition("?")
        return name.lower(), path, dict(parse_qsl(query, keep_blank_values=True))
    return None, spec, {}


def load_dataset(spec: str, columns: list[str] | None = None, task: str | None = None,
                 size: int | tuple[int, int] | None = None, progress: bool = True) -> ArrayDataset:
    """Load any supported dataset; optionally select target columns, set the task, resize."""
    name, path, opts = parse_spec(str(spec))
    if name is not None:
        if size is not None:  # let the loader resize as it reads (full-size frames are large)
            opts.setdefault("size", size)
        ds = DATASETS.get(name)(path, progress=progress, **opts)
        if columns:
            names = ds.target_names or []
            missing = [c for c in columns if c not in names]
            if missing:
                raise DrmguardError(f"{name} has no target(s) {', '.join(missing)}")
            ds = ArrayDataset(ds.images, ds.targets[:, [names.index(c) for c in columns]],
                              ds.task if len(columns) == ds.target_dim else "generic",
                              ds.subjects, list(columns), ds.meta)
    else:
        p = Path(path)
        if not p.exists():
            raise DrmguardError(f"data path {p} does not exist")
        if p.is_dir():
            ds = load_folder(p, columns=columns, progress=progress)
        elif p.suffix == ".npz":
            ds = load_npz(p, columns=columns)
        else:
            raise DrmguardError(f"{p} is neither a dataset folder nor a .npz file")
    if task == "classification" and ds.task != "classification":
        from .formats import as_classification

        ds = as_classification(ds, source=str(spec))
    elif task is not None:
        ds.task = task
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        ds = ds.resized(hw)
    return ds


__all__ = ["ArrayDataset", "Splits", "split_dataset", "load_dataset", "parse_spec",
           "load_folder", "load_npz", "save_folder", "save_npz", "REAL_DATASETS", "DATASETS"]
