"""Pandora (Borghi et al., CVPR 2017 "POSEidon"): head and shoulder pose, Kinect One.

Layout (as read by public loaders; no official README was found)::

    <root>/SS/<sequence>/RGB/NNNNNN_RGB.png     SS = subject 01…22, 5 sequences each
    <root>/SS/<sequence>/data.json              per-frame records (or data.p, a pickle)

A record holds ``frame_num`` and ``orientation.euler.{roll, pitch, yaw}`` (degrees, from the
inertial sensor on the head), plus skeleton joints ``jointsRGB`` ((x, y) in the 1920×1080 colour
image, Kinect v2 order: 3 = head) and ``joints3D`` ((x, y, z) in metres). ``data.json`` may be
a list of records or a mapping frame -> record (records may themselves be JSON strings).
``data.p`` is read with a restricted unpickler that accepts only builtin containers, strings
and numbers — never arbitrary classes — because data files are untrusted.

Output: task ``headpose``, targets (yaw, pitch, roll) in degrees taken from the stored keys
named by ``euler_keys`` (default ``yaw,pitch,roll``; a third-party loader claims the keys are
permuted, which would be ``euler_keys=roll,yaw,pitch`` — unverified), subject ids from the
``SS`` folders.

Face crop (``crop=``): ``head`` = a square around the head joint, ``crop_mm`` wide at the
head's depth when ``joints3D`` has it (else ``crop_px`` colour-image pixels); ``center`` = a
centred square of ``center_crop`` × the image height; ``none`` = keep the frame (for the
authors' already-cropped faces); ``auto`` (default) = ``none`` for images of at most 256 px,
else ``head`` where the joint is usable and ``center`` otherwise. Cropped faces are resized to
``size`` (default 112); uncropped images keep their size unless ``size`` is given.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from pathlib import Path

import numpy as np

from ..errors import DrmguardError
from ._realdata import (Collector, Opt, crop_resize, is_junk, limit_per_subject, open_rgb,
                        parse_id_list, parse_options, parse_size, require_dir, resize_array,
                        subdirs, track)
from .base import ArrayDataset

NAME = "pandora"
TARGET_NAMES = ["yaw", "pitch", "roll"]
DEFAULT_SIZE = 112
KINECT2_COLOR_FOCAL = 1060.0  # approx. focal length of the Kinect v2 colour camera at 1920 px
TRAIN_SUBJECTS = tuple(range(1, 18))  # public loader split: 01–17 train, 18–22 validation
TEST_SUBJECTS = tuple(range(18, 23))

OPTIONS = {
    "crop": Opt("auto", str, ("auto", "head", "center", "none"), "face crop mode"),
    "crop_mm": Opt(300.0, float, None, "head crop side in mm at the head depth"),
    "crop_px": Opt(320.0, float, None, "head crop side in 1920-px pixels without depth"),
    "center_crop": Opt(0.5, float, None, "centre crop side as a fraction of the height"),
    "head_joint": Opt(3, int, None, "index of the head in jointsRGB/joints3D"),
    "joint_width": Opt(1920.0, float, None, "image width the jointsRGB coordinates refer to"),
    "euler_keys": Opt("yaw,pitch,roll", str, None,
                      "stored keys giving (yaw, pitch, roll); '-' negates, e.g. -yaw"),
    "labels": Opt("auto", str, ("auto", "json", "pickle"), "label file: data.json or data.p"),
    "subjects": Opt("", str, None, "only these subject ids, e.g. 1-17"),
    "max_per_subject": Opt(0, int, None, "keep at most N frames per subject (0 = all)"),
}

_RGB_RE = re.compile(r"(\d+)_RGB\.png", re.IGNORECASE)


# --- untrusted pickles -------------------------------------------------------------------
class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only builtin containers/scalars; any other global is refused,
    so a crafted ``data.p`` cannot run code."""

    _ALLOWED = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str",
                "bytes", "bytearray", "bool", "long", "unicode"}

    def find_class(self, module, name):
        if (module in ("builtins", "__builtin__") and name in self._ALLOWED) or \
                (module == "collections" and name == "OrderedDict"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an untrusted pickle")


def safe_pickle_load(path: Path):
    """Load a pickle of plain data (Python 2 or 3) without resolving arbitrary classes."""
    try:
        return SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as e:
        raise DrmguardError(f"{NAME}: cannot read {path} as a plain-data pickle: {e}") from None


# --- labels ------------------------------------------------------------------------------
def _records(path: Path) -> list:
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DrmguardError(f"corrupt label file {path}: {e}") from None
    else:
        data = safe_pickle_load(path)
    if isinstance(data, dict) and "frame_num" not in data:
        out = []
        for key, rec in data.items():
            if isinstance(rec, str):
                try:
                    rec = json.loads(rec)
                except json.JSONDecodeError as e:
                    raise DrmguardError(f"corrupt label file {path}, frame {key}: {e}") from None
            if isinstance(rec, dict) and "frame_num" not in rec and str(key).isdigit():
                rec = {**rec, "frame_num": int(key)}
            out.append(rec)
        return out
    if isinstance(data, (list, tuple)):
        return list(data)
    raise DrmguardError(f"corrupt label file {path}: expected a list of frame records or a "
                        f"mapping frame -> record, got {type(data).__name__}")


def _parse_keys(text: str) -> list[tuple[str, float]]:
    keys = [k.strip().lower() for k in text.split(",")]
    parsed = [(k.lstrip("+-"), -1.0 if k.startswith("-") else 1.0) for k in keys]
    names = [k for k, _ in parsed]
    if len(parsed) != 3 or sorted(names) != ["pitch", "roll", "yaw"]:
        raise DrmguardError(f"{NAME}: euler_keys={text!r} must name yaw, pitch and roll once "
                            "each, e.g. yaw,pitch,roll")
    return parsed


def _euler(rec, keys) -> np.ndarray | None:
    try:
        e = rec["orientation"]["euler"]
        vals = [sign * float(e[k]) for k, sign in keys]
    except (KeyError, TypeError, ValueError):
        return None
    return np.asarray(vals) if np.all(np.isfinite(vals)) else None


def _joint(rec, key: str, index: int, dims: int) -> np.ndarray | None:
    try:
        j = np.asarray(rec[key][index], dtype=np.float64).ravel()
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return j[:dims] if j.size >= dims and np.all(np.isfinite(j[:dims])) else None


# --- loading -----------------------------------------------------------------------------
def _sequences(root: Path) -> list[tuple[int, Path]]:
    """(subject id, sequence folder) for SS/<seq>/ folders with an RGB/ folder."""
    for base in [root] + subdirs(root):
        found = [(int(s.name), q) for s in subdirs(base) if s.name.isdigit()
                 for q in subdirs(s) if (q / "RGB").is_dir()]
        if found:
            return found
    return []


def _label_file(seq: Path, which: str) -> Path | None:
    names = {"auto": ("data.json", "data.p"), "json": ("data.json",), "pickle": ("data.p",)}
    for n in names[which]:
        if (seq / n).is_file():
            return seq / n
    return None


def load(path: str, size=None, progress: bool = True, **options) -> ArrayDataset:
    """Load Pandora from ``path`` (the folder holding the subject folders 01…22)."""
    opts = parse_options(NAME, options, OPTIONS)
    keys = _parse_keys(opts["euler_keys"])
    out_hw = parse_size(size)
    root = require_dir(path, NAME)
    keep = parse_id_list(opts["subjects"])
    seqs = [(s, q) for s, q in _sequences(root) if keep is None or s in keep]
    if not seqs:
        raise DrmguardError(f"{NAME}: no SS/<sequence>/RGB/ folders in {root}")
    col = Collector(NAME, root)
    items = []  # (subject, image path, record)
    for sid, seq in seqs:
        label_file = _label_file(seq, opts["labels"])
        if label_file is None:
            col.skip("sequences without data.json/data.p")
            continue
        frames = {}
        for f in (seq / "RGB").iterdir():
            if not is_junk(f) and (m := _RGB_RE.fullmatch(f.name)):
                frames[int(m.group(1))] = f
        for rec in _records(label_file):
            try:
                num = int(rec["frame_num"])
            except (KeyError, TypeError, ValueError):
                raise DrmguardError(f"corrupt label file {label_file}: a record has no "
                                    "frame_num") from None
            if num not in frames:
                col.skip("labels without image")
                continue
            items.append((sid, frames.pop(num), rec))
        for _ in frames:
            col.skip("images without label")
    items = limit_per_subject(items, lambda it: it[0], opts["max_per_subject"])
    native, crops = None, {"head": 0, "center": 0, "none": 0}
    for sid, img_path, rec in track(items, NAME, progress):
        target = _euler(rec, keys)
        if target is None:
            col.skip("labels without orientation.euler")
            continue
        img = open_rgb(img_path)
        mode = _crop_mode(opts["crop"], img, rec, opts)
        crops[mode] += 1
        if mode == "none":
            native = native or (img.height, img.width)
            face = resize_array(img, out_hw or native)
        else:
            center, side = _crop_box(mode, img, rec, opts)
            face = crop_resize(img, center, side, out_hw or (DEFAULT_SIZE, DEFAULT_SIZE))
        col.add(face, target, sid)
    meta = {"layout": "original", "units": "deg", "euler_keys": opts["euler_keys"],
            "crop": opts["crop"], "crops": {k: v for k, v in crops.items() if v}}
    return col.build("headpose", TARGET_NAMES, meta)


def _crop_mode(mode: str, img, rec, opts: dict) -> str:
    """The crop actually used for this frame ('head' falls back to 'center' without a joint)."""
    if mode == "auto" and min(img.size) <= 256:
        return "none"
    if mode in ("auto", "head"):
        return "head" if _head_pixel(img, rec, opts) is not None else "center"
    return mode


def _head_pixel(img, rec, opts: dict) -> np.ndarray | None:
    j = _joint(rec, "jointsRGB", opts["head_joint"], 2)
    if j is None:
        return None
    j = j * (img.width / opts["joint_width"])
    return j if 0 <= j[0] < img.width and 0 <= j[1] < img.height else None


def _crop_box(mode: str, img, rec, opts: dict) -> tuple[tuple[float, float], float]:
    """(centre (x, y), side) of the square face crop in image pixels."""
    if mode == "head":
        scale = img.width / opts["joint_width"]
        head = _head_pixel(img, rec, opts)
        j3 = _joint(rec, "joints3D", opts["head_joint"], 3)
        if j3 is not None and j3[2] > 0:
            depth_mm = j3[2] * 1000.0 if j3[2] < 20 else j3[2]  # metres (Kinect) or mm
            side = KINECT2_COLOR_FOCAL * scale * opts["crop_mm"] / depth_mm
        else:
            side = opts["crop_px"] * scale
        return (float(head[0]), float(head[1])), side
    return (img.width / 2.0, img.height / 2.0), opts["center_crop"] * img.height
