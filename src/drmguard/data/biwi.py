"""Biwi Kinect Head Pose Database (Fanelli et al., IJCV 2013): 24 sequences of 20 people.

Two layouts (``layout=auto`` detects them):

- ``original`` (``kinect_head_pose_db.tgz``): ``hpdb/NN/frame_XXXXX_rgb.png`` (640×480) with
  ``frame_XXXXX_pose.txt`` (3 rows of the head rotation matrix R, then the head centre in mm in
  depth-camera coordinates) and per-sequence ``rgb.cal`` (RGB intrinsics K, distortion, and
  the extrinsics R, t of the RGB camera relative to the depth camera). The face is cropped
  around the head centre projected into the RGB image: x_rgb = R·x_depth + t, then K; the box is
  ``crop_mm`` millimetres wide at the head's depth, so the head fills the same fraction of
  every crop. Images are resized to ``size`` (default 112, the paper's head-pose size).
- ``poseidon`` (Borghi et al.'s cropped faces, gdubrg/POSEidon-Biwi): ``NN/angles.txt``
  (tab-separated ``frame roll pitch yaw u v X Y Z``, degrees) next to
  ``frame_XXXXX_face_<kind>.png`` crops; ``image=<kind>`` picks the kind (``rgb``, ``gray``,
  ``depth``, ``OF``) when a folder holds several. Grey crops are replicated to three channels.

Output: task ``headpose``, targets (yaw, pitch, roll) in degrees, RGB uint8 images, subject
ids = sequence numbers (1–24; four people were recorded twice, so a sequence is not a person).
The rotation matrix is turned into angles with one of two conventions (``convention=``):

- ``fsanet`` (default; FSA-Net's ``TYY_create_db_biwi.py``, used by most RGB papers and
  6DRepNet's npz): M = Rᵀ = Rz(γ)·Ry(β)·Rx(α); yaw = −β, pitch = α, roll = −γ.
- ``hopenet`` (deep-head-pose ``datasets.py``): R = Rz(γ)·Ry(β)·Rx(α); yaw = β, pitch = −α,
  roll = γ.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ..errors import DrmguardError
from ._realdata import (Collector, Opt, crop_resize, floats, is_junk, limit_per_subject, open_rgb,
                        parse_id_list, parse_options, parse_size, read_text_lines, require_dir,
                        resize_array, subdirs, track)
from .base import ArrayDataset

NAME = "biwi"
LAYOUTS = ("original", "poseidon")
CONVENTIONS = ("fsanet", "hopenet")
TARGET_NAMES = ["yaw", "pitch", "roll"]
DEFAULT_SIZE = 112

OPTIONS = {
    "layout": Opt("auto", str, ("auto",) + LAYOUTS, "on-disk layout (auto-detected)"),
    "convention": Opt("fsanet", str, CONVENTIONS, "rotation matrix -> Euler angles"),
    "crop": Opt("head", str, ("head", "none"), "original: crop around the head or keep frames"),
    "crop_mm": Opt(250.0, float, None, "original: crop side in millimetres at the head depth"),
    "image": Opt("auto", str, None, "poseidon: which frame_XXXXX_face_<kind>.png to read"),
    "subjects": Opt("", str, None, "only these sequence ids, e.g. 1-10,12"),
    "max_per_subject": Opt(0, int, None, "keep at most N frames per sequence (0 = all)"),
}

_RGB_RE = re.compile(r"frame_(\d+)_rgb\.png", re.IGNORECASE)
_POSE_RE = re.compile(r"frame_(\d+)_pose\.txt", re.IGNORECASE)
_FACE_RE = re.compile(r"frame_(\d+)_face_(\w+?)\.png", re.IGNORECASE)


# --- angles ------------------------------------------------------------------------------
def rotation_to_euler(R, convention: str = "fsanet") -> np.ndarray:
    """(yaw, pitch, roll) in degrees from a Biwi pose matrix R (file rows) or a stack (…,3,3)."""
    R = np.asarray(R, dtype=np.float64)
    if convention == "fsanet":
        gamma, beta, alpha = Rotation.from_matrix(np.swapaxes(R, -1, -2)).as_euler(
            "ZYX", degrees=True).T
        return np.stack([-beta, alpha, -gamma], -1)
    if convention == "hopenet":
        gamma, beta, alpha = Rotation.from_matrix(R).as_euler("ZYX", degrees=True).T
        return np.stack([beta, -alpha, gamma], -1)
    raise DrmguardError(f"{NAME}: unknown convention '{convention}' "
                        f"(choose {', '.join(CONVENTIONS)})")


def euler_to_rotation(yaw: float, pitch: float, roll: float,
                      convention: str = "fsanet") -> np.ndarray:
    """Inverse of :func:`rotation_to_euler`: the pose-file matrix R for angles in degrees."""
    if convention == "fsanet":
        return Rotation.from_euler("ZYX", [-roll, -yaw, pitch], degrees=True).as_matrix().T
    if convention == "hopenet":
        return Rotation.from_euler("ZYX", [roll, yaw, -pitch], degrees=True).as_matrix()
    raise DrmguardError(f"{NAME}: unknown convention '{convention}' "
                        f"(choose {', '.join(CONVENTIONS)})")


# --- files -------------------------------------------------------------------------------
def read_pose(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(R 3×3, head centre (3,) in mm) from a ``frame_XXXXX_pose.txt`` (blank lines and
    trailing spaces tolerated)."""
    v = floats(" ".join(read_text_lines(path)).split(), str(path))
    if v.size != 12:
        raise DrmguardError(f"corrupt label file {path}: {v.size} numbers, expected 12 "
                            "(3×3 rotation + head centre)")
    return v[:9].reshape(3, 3), v[9:]


def read_calibration(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, R, t) from a Biwi ``*.cal`` file: K (9 numbers), distortion (any count), R (9), t (3)."""
    if not path.is_file():
        raise DrmguardError(f"{NAME}: missing calibration file {path}")
    v = floats(" ".join(read_text_lines(path)).split(), str(path))
    if v.size < 21:
        raise DrmguardError(f"corrupt calibration file {path}: {v.size} numbers, expected "
                            "K (9), distortion, R (9), t (3)")
    return v[:9].reshape(3, 3), v[-12:-3].reshape(3, 3), v[-3:]


def project_to_rgb(center_mm, calibration) -> tuple[float, float, float]:
    """(u, v, depth_mm) of a depth-camera point in the RGB image: K·(R·x + t)."""
    K, R, t = calibration
    x = R @ np.asarray(center_mm, dtype=np.float64) + t
    if x[2] <= 0:
        raise DrmguardError(f"{NAME}: head centre {center_mm} is behind the RGB camera")
    uvw = K @ x
    return float(uvw[0] / uvw[2]), float(uvw[1] / uvw[2]), float(x[2])


def _sequence_id(d: Path) -> int | None:
    return int(d.name) if d.name.isdigit() else None


# --- loading -----------------------------------------------------------------------------
def load(path: str, size=None, progress: bool = True, **options) -> ArrayDataset:
    """Load Biwi from ``path`` (``hpdb/``, its parent, or a POSEidon ``face_dataset_*``
    folder)."""
    opts = parse_options(NAME, options, OPTIONS)
    root = require_dir(path, NAME)
    layout = opts["layout"] if opts["layout"] != "auto" else detect_layout(root)
    out_hw = parse_size(size)
    if layout == "original":
        return _load_original(root, out_hw or (DEFAULT_SIZE, DEFAULT_SIZE), progress, opts)
    return _load_poseidon(root, out_hw, progress, opts)


def detect_layout(root: Path) -> str:
    if _original_sequences(root):
        return "original"
    if _poseidon_sequences(root):
        return "poseidon"
    raise DrmguardError(f"{NAME}: no known layout in {root} (expected NN/frame_XXXXX_pose.txt "
                        "or NN/angles.txt)")


def _original_sequences(root: Path) -> list[Path]:
    """Sequence folders NN/ with pose files, in ``root`` or one wrapper folder (hpdb/)."""
    for base in [root] + subdirs(root):
        seqs = [d for d in subdirs(base)
                if _sequence_id(d) is not None and any(d.glob("frame_*_pose.txt"))]
        if seqs:
            return seqs
    return []


def _poseidon_sequences(root: Path) -> list[Path]:
    """Folders holding angles.txt: ``root`` itself, its NN/ children, or one level deeper."""
    if (root / "angles.txt").is_file():
        return [root]
    for base in [root] + subdirs(root):
        seqs = [d for d in subdirs(base) if (d / "angles.txt").is_file()]
        if seqs:
            return seqs
    return []


def _keep(seqs: list[Path], opts: dict) -> list[Path]:
    keep = parse_id_list(opts["subjects"])
    return [d for d in seqs if keep is None or _sequence_id(d) in keep]


def _load_original(root: Path, out_hw, show: bool, opts: dict) -> ArrayDataset:
    seqs = _keep(_original_sequences(root), opts)
    if not seqs:
        raise DrmguardError(f"{NAME}: no sequence folders NN/ with frame_XXXXX_pose.txt in "
                            f"{root}")
    col = Collector(NAME, root)
    items = []  # (sequence id, rgb path, pose path, calibration)
    for d in seqs:
        rgb, pose = {}, {}
        for f in d.iterdir():
            if is_junk(f):
                continue
            if m := _RGB_RE.fullmatch(f.name):
                rgb[int(m.group(1))] = f
            elif m := _POSE_RE.fullmatch(f.name):
                pose[int(m.group(1))] = f
        for _ in set(rgb) - set(pose):
            col.skip("frames without pose")
        for _ in set(pose) - set(rgb):
            col.skip("poses without frame")
        cal = read_calibration(d / "rgb.cal") if opts["crop"] == "head" and pose else None
        items += [(_sequence_id(d), rgb[k], pose[k], cal) for k in sorted(set(rgb) & set(pose))]
    items = limit_per_subject(items, lambda it: it[0], opts["max_per_subject"])
    for sid, rgb_path, pose_path, cal in track(items, NAME, show):
        R, center = read_pose(pose_path)
        img = open_rgb(rgb_path)
        if cal is None:
            face = resize_array(img, out_hw)
        else:
            u, v, depth = project_to_rgb(center, cal)
            side = cal[0][0, 0] * opts["crop_mm"] / depth
            face = crop_resize(img, (u, v), side, out_hw)
        col.add(face, rotation_to_euler(R, opts["convention"]), sid)
    meta = {"layout": "original", "units": "deg", "convention": opts["convention"],
            "crop": opts["crop"], "crop_mm": opts["crop_mm"]}
    return col.build("headpose", TARGET_NAMES, meta)


def _load_poseidon(root: Path, out_hw, show: bool, opts: dict) -> ArrayDataset:
    seqs = _keep(_poseidon_sequences(root), opts)
    if not seqs:
        raise DrmguardError(f"{NAME}: no folders with angles.txt in {root}")
    faces: dict[Path, dict[str, dict[int, Path]]] = {}
    for d in seqs:
        per_kind: dict[str, dict[int, Path]] = {}
        for f in d.iterdir():
            if not is_junk(f) and (m := _FACE_RE.fullmatch(f.name)):
                per_kind.setdefault(m.group(2).lower(), {})[int(m.group(1))] = f
        faces[d] = per_kind
    kinds = sorted({k for per in faces.values() for k in per})
    kind = opts["image"].lower()
    if kind == "auto":
        if not kinds:
            raise DrmguardError(f"{NAME}: no frame_XXXXX_face_<kind>.png images in {root}")
        if len(kinds) > 1 and "rgb" not in kinds:
            raise DrmguardError(f"{NAME}: several image kinds ({', '.join(kinds)}) in {root}; "
                                "choose one with image=<kind>")
        kind = "rgb" if "rgb" in kinds else kinds[0]
    elif kind not in kinds:
        raise DrmguardError(f"{NAME}: no frame_XXXXX_face_{kind}.png images in {root} "
                            f"(found: {', '.join(kinds) or 'none'})")
    col = Collector(NAME, root)
    items = []
    for d in seqs:
        sid = _sequence_id(d)
        if sid is None:
            raise DrmguardError(f"{NAME}: sequence folder name {d.name!r} is not a number")
        images = faces[d].get(kind, {})
        for n, line in enumerate(read_text_lines(d / "angles.txt"), start=1):
            tok = line.replace("\t", " ").split()
            if len(tok) < 4:
                raise DrmguardError(f"corrupt label file {d / 'angles.txt'}, line {n}: "
                                    f"{len(tok)} columns, expected 9")
            vals = floats(tok[:4], f"{d / 'angles.txt'}, line {n}")
            frame, roll, pitch, yaw = int(vals[0]), vals[1], vals[2], vals[3]
            if frame not in images:
                col.skip("labels without image")
                continue
            items.append((sid, images.pop(frame), (yaw, pitch, roll)))
        for _ in images:
            col.skip("images without label")
    items = limit_per_subject(items, lambda it: it[0], opts["max_per_subject"])
    native = None
    for sid, img_path, target in track(items, NAME, show):
        img = open_rgb(img_path)
        native = native or (img.height, img.width)
        col.add(resize_array(img, out_hw or native), target, sid)
    meta = {"layout": "poseidon", "units": "deg", "image": kind,
            "convention": "as stored in angles.txt (frame roll pitch yaw)"}
    return col.build("headpose", TARGET_NAMES, meta)
