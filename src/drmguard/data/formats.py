"""The two native on-disk dataset formats.

- **folder**: ``DIR/images/*.png`` + ``DIR/labels.csv`` (header ``file,<target names>``,
  optional ``subject`` column) + ``DIR/meta.json`` (``{"task": ..., "target_names": [...]}``).
- **npz**: one ``.npz`` with ``images`` (N×H×W×C uint8), ``targets`` (N×K float32), optional
  ``subjects`` (N), and ``task`` / ``target_names`` entries.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DrmguardError
from ..tasks import is_onehot, labels_to_onehot
from ..utils import progress_bar
from .base import ArrayDataset

META_JSON = "meta.json"
LABELS_CSV = "labels.csv"


CLASS_LABEL = "label"  # the column (folder) of class indices of classification data


def as_classification(ds: ArrayDataset, classes: list | int | None = None,
                      source: str = "the data") -> ArrayDataset:
    """``ds`` with one-hot targets and task ``classification``: class indices (one column) are
    converted, checked against ``classes`` (the class names, or their number; default: the
    data's target names when there are K ≥ 2 of them and one-hot targets, else max label + 1);
    one-hot targets are kept."""
    if ds.target_dim > 1:
        if not is_onehot(ds.targets):
            raise DrmguardError(f"{source}: classification targets must be one class index per "
                                f"image (or one-hot rows), got {ds.target_dim} values per image")
        names = ds.target_names or [str(i) for i in range(ds.target_dim)]
        return ArrayDataset(ds.images, ds.targets, "classification", ds.subjects, list(names),
                            dict(ds.meta))
    if isinstance(classes, int):
        names = [str(i) for i in range(classes)]
    elif classes:
        names = [str(c) for c in classes]
    else:
        top = float(np.nanmax(ds.targets)) if len(ds.targets) else 1.0
        names = [str(i) for i in range(max(2, int(top) + 1 if np.isfinite(top) else 2))]
    onehot = labels_to_onehot(ds.targets[:, 0], len(names), source)
    return ArrayDataset(ds.images, onehot, "classification", ds.subjects, names, dict(ds.meta))


def save_folder(ds: ArrayDataset, out_dir: str | os.PathLike, progress: bool = True,
                overwrite: bool = False) -> Path:
    out = Path(out_dir)
    if (out / LABELS_CSV).exists() and not overwrite:
        raise DrmguardError(f"{out} already holds a dataset; choose another `out`")
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = ds.target_names or [f"y{i}" for i in range(ds.target_dim)]
    classes = None
    if ds.task == "classification" and is_onehot(ds.targets):
        classes, names = list(names), [CLASS_LABEL]
        ds = ArrayDataset(ds.images, ds.targets.argmax(1)[:, None], ds.task, ds.subjects,
                          names, ds.meta)
    width = max(5, len(str(len(ds))))
    with open(out / LABELS_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", *names] + (["subject"] if ds.subjects is not None else []))
        for i in progress_bar(range(len(ds)), desc="writing images", enabled=progress):
            rel = f"images/{i:0{width}d}.png"
            img = ds.images[i]
            Image.fromarray(img[..., 0] if ds.channels == 1 else img).save(out / rel)
            row = [rel, *((f"{int(v)}" for v in ds.targets[i]) if classes is not None
                          else (f"{v:.7g}" for v in ds.targets[i]))]
            if ds.subjects is not None:
                row.append(int(ds.subjects[i]))
            w.writerow(row)
    meta = {"task": ds.task, "target_names": list(names), "n": len(ds),
            "image_size": list(ds.image_size), "channels": ds.channels, **ds.meta}
    if classes is not None:
        meta["classes"] = classes
    (out / META_JSON).write_text(json.dumps(meta, indent=2))
    return out


def load_folder(path: str | os.PathLike, columns: list[str] | None = None,
                progress: bool = True, channels: int | None = None) -> ArrayDataset:
    """Read the folder format; ``columns`` selects (and orders) target columns."""
    root = Path(path)
    csv_path = root / LABELS_CSV
    if not csv_path.exists():
        raise DrmguardError(f"{root} has no {LABELS_CSV}")
    meta = {}
    if (root / META_JSON).exists():
        try:
            meta = json.loads((root / META_JSON).read_text())
        except json.JSONDecodeError as e:
            raise DrmguardError(f"{root / META_JSON} is not valid JSON: {e}") from None
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0] or rows[0][0].strip() != "file":
        raise DrmguardError(f"{csv_path} must start with a header 'file,<target names>'")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if r and any(c.strip() for c in r)]
    if not body:
        raise DrmguardError(f"{csv_path} lists no images")
    label_cols = [h for h in header[1:] if h != "subject"]
    if columns:
        missing = [c for c in columns if c not in header]
        if missing:
            raise DrmguardError(f"{csv_path} has no column(s) {', '.join(missing)}; "
                                f"it has {', '.join(header[1:])}")
        label_cols = list(columns)
    if not label_cols:
        raise DrmguardError(f"{csv_path} has no target columns")
    idx = [header.index(c) for c in label_cols]
    s_idx = header.index("subject") if "subject" in header else None
    images, targets, subjects = [], [], []
    for lineno, r in enumerate(progress_bar(body, desc="reading images", enabled=progress), 2):
        if len(r) < len(header):
            raise DrmguardError(f"{csv_path}:{lineno}: expected {len(header)} fields, got {len(r)}")
        try:
            targets.append([float(r[i]) for i in idx])
        except ValueError:
            raise DrmguardError(f"{csv_path}:{lineno}: non-numeric target value") from None
        if s_idx is not None:
            subjects.append(int(float(r[s_idx])))
        images.append(_read_image(root / r[0].strip(), channels))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DrmguardError(f"{root}: images have different sizes {sorted(shapes)[:3]}...; "
                            "resize them to one size first")
    task = meta.get("task", "generic")
    ds = ArrayDataset(np.stack(images), np.asarray(targets, np.float32), task,
                      np.asarray(subjects) if subjects else None, label_cols,
                      {"source": str(root)})
    if task == "classification":
        ds = as_classification(ds, meta.get("classes"), str(csv_path))
    return ds


def _read_image(path: Path, channels: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            mode = "L" if channels == 1 or (channels is None and im.mode in ("L", "I;16", "I"))\
                else "RGB"
            arr = np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise DrmguardError(f"image {path} is missing") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DrmguardError(f"cannot read image {path}: {e}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def save_npz(ds: ArrayDataset, out_file: str | os.PathLike, overwrite: bool = False) -> Path:
    out = Path(out_file)
    if out.suffix != ".npz":
        out = out.with_suffix(".npz")
    if out.exists() and not overwrite:
        raise DrmguardError(f"{out} already exists; choose another `out`")
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if ds.subjects is None else {"subjects": ds.subjects}
    targets = ds.targets
    if ds.task == "classification" and is_onehot(targets):
        targets = targets.argmax(1).astype(np.int64)  # class indices on disk
    np.savez_compressed(out, images=ds.images, targets=targets, task=np.array(ds.task),
                        target_names=np.array(ds.target_names or []), **extra)
    return out


def load_npz(path: str | os.PathLike, columns: list[str] | None = None) -> ArrayDataset:
    p = Path(path)
    try:
        z = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise DrmguardError(f"{p} does not exist") from None
    except (ValueError, OSError) as e:
        raise DrmguardError(f"cannot read {p} as npz: {e}") from None
    with z:
        for key in ("images", "targets"):
            if key not in z:
                raise DrmguardError(f"{p} has no '{key}' array")
        images, targets = z["images"], z["targets"]
        task = str(z["task"]) if "task" in z else "generic"
        names = [str(n) for n in z["target_names"]] if "target_names" in z else None
        subjects = z["subjects"] if "subjects" in z else None
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise DrmguardError(f"{p}: 'images' must be N×H×W(×C) uint8, got "
                            f"{images.dtype} {images.shape}")
    targets = np.asarray(targets, np.float32)
    if targets.ndim == 1:
        targets = targets[:, None]
    if task == "classification":
        return as_classification(ArrayDataset(images, targets, task, subjects, None,
                                              {"source": str(p)}), names, str(p))
    names = names or [f"y{i}" for i in range(targets.shape[1])]
    if columns:
        missing = [c for c in columns if c not in names]
        if missing:
            raise DrmguardError(f"{p} has no target(s) {', '.join(missing)}; it has {', '.join(names)}")
        targets = targets[:, [names.index(c) for c in columns]]
        names = list(columns)
    return ArrayDataset(images, targets, task, subjects, names, {"source": str(p)})
