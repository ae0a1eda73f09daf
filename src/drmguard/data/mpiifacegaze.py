"""MPIIFaceGaze (Zhang et al., TPAMI 2019): 15 participants, full-face gaze estimation.

Four on-disk layouts are read (``layout=auto`` detects them):

- ``normalized``: the official ``MPIIFaceGaze_normalized`` release, ``pXX.mat`` files in MATLAB
  v7.3 (HDF5) with ``Data/data`` (n, 3, 448, 448) BGR images and ``Data/label`` (n, 16) whose
  columns 0–1 are the gaze (pitch, yaw) in radians.
- ``h5``: a single ``.h5`` file derived from the release by hysts' ``preprocess_mpiifacegaze.py``
  (``pXX/image/NNNN`` 448×448×3, ``pXX/gaze/NNNN`` = (pitch, yaw)) or by X-Shi's "Revisiting
  data normalization" script (same keys plus ``left``/``right`` groups, 224×224, opposite signs).
- ``gazehub``: Yihua Cheng's GazeHub layout, ``Image/pXX/face/N.jpg`` + ``Label/pXX.label``
  (header line; the ``2DGaze`` column holds ``yaw,pitch`` in radians).
- ``original``: the raw release, ``pXX/pXX.txt`` (28 columns) + ``pXX/Calibration/Camera.mat`` +
  full frames ``pXX/dayNN/NNNN.jpg``. Frames are normalised here with the data normalisation of
  Zhang et al. (ETRA 2018, "Revisiting data normalization"): a virtual camera (focal 960,
  distance 600 mm, 224×224) looks straight at the face centre with its x-axis aligned to the
  head's; the gaze vector gt − fc is rotated by the same rotation (modified normalisation:
  rotation only, no scaling).

Output: task ``gaze``, targets (yaw, pitch) in radians in the convention of
:mod:`drmguard.tasks` (camera looks along +z, gaze points back at it: pitch = asin(−y),
yaw = atan2(−x, −z); looking up is positive pitch, looking to the image's left — the subject's
right — is positive yaw), RGB uint8 images, subject ids 0–14 from ``pXX``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from ..errors import DrmguardError
from ..tasks import vector_to_gaze
from ._realdata import (Collector, Opt, bgr_to_rgb, floats, is_junk, open_rgb, parse_id_list,
                        parse_options, parse_size, read_text_lines, require_dir, resize_array,
                        track)
from .base import ArrayDataset

NAME = "mpiifacegaze"
LAYOUTS = ("normalized", "h5", "gazehub", "original")
TARGET_NAMES = ["yaw", "pitch"]

OPTIONS = {
    "layout": Opt("auto", str, ("auto",) + LAYOUTS, "on-disk layout (auto-detected)"),
    "subjects": Opt("", str, None, "only these participants, e.g. p00,p03 or 0-4"),
    "max_per_subject": Opt(0, int, None, "keep at most N samples per participant (0 = all)"),
    "channels": Opt("bgr", str, ("bgr", "rgb"),
                    "channel order of the arrays in normalized/h5 files"),
    "focal": Opt(960.0, float, None, "original: focal length of the normalised camera (px)"),
    "distance": Opt(600.0, float, None, "original: distance of the normalised camera (mm)"),
    "roi": Opt(224, int, None, "original: side of the normalised face image (px)"),
    "scale_gaze": Opt(False, bool, None,
                      "original: rotate the gaze by S·R (GazeHub) instead of R only"),
}

_SUBJECT_RE = re.compile(r"^p(\d+)$", re.IGNORECASE)


def load(path: str, size=None, progress: bool = True, **options) -> ArrayDataset:
    """Load MPIIFaceGaze from ``path`` (a folder, or a ``.h5`` file for ``layout=h5``).

    ``size`` resizes the images (int or (H, W)); by default they keep the layout's native size
    (448 for ``normalized``/hysts ``h5``, 224 for ``gazehub``, ``roi`` for ``original``).
    """
    opts = parse_options(NAME, options, OPTIONS)
    out_hw = parse_size(size)
    p = Path(str(path)).expanduser()
    layout = opts["layout"]
    if layout == "auto":
        layout = detect_layout(p)
    if layout != "h5":
        p = require_dir(p, NAME)
    elif not p.is_file():
        raise DrmguardError(f"{NAME}: layout h5 needs a .h5 file, got {p}")
    reader = {"normalized": _load_normalized, "h5": _load_h5, "gazehub": _load_gazehub,
              "original": _load_original}[layout]
    return reader(p, out_hw, progress, opts)


def detect_layout(path) -> str:
    """Which of :data:`LAYOUTS` the file or folder at ``path`` holds."""
    p = Path(str(path)).expanduser()
    if p.is_file() and p.suffix.lower() in (".h5", ".hdf5"):
        return "h5"
    root = require_dir(p, NAME)
    if (root / "Label").is_dir() and any((root / "Label").glob("*.label")):
        return "gazehub"
    if _normalized_dir(root) is not None:
        return "normalized"
    if any((d / f"{d.name}.txt").is_file() for d in _subject_dirs(root)):
        return "original"
    raise DrmguardError(
        f"{NAME}: no known layout in {root} (expected pXX.mat files, Label/pXX.label + Image/, "
        "or pXX/pXX.txt folders)")


# --- helpers -----------------------------------------------------------------------------
def _subject_id(name: str) -> int | None:
    m = _SUBJECT_RE.match(name)
    return int(m.group(1)) if m else None


def _subject_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir()
                  if d.is_dir() and not is_junk(d) and _subject_id(d.name) is not None)


def _wanted(sid: int, opts: dict) -> bool:
    keep = parse_id_list(opts["subjects"])
    return keep is None or sid in keep


def _normalized_dir(root: Path) -> Path | None:
    """The folder holding pXX.mat: ``root`` or one sub-folder (e.g. MPIIFaceGaze_normalizad)."""
    for cand in [root] + sorted(d for d in root.iterdir() if d.is_dir() and not is_junk(d)):
        if any(_subject_id(f.stem) is not None for f in cand.glob("*.mat") if not is_junk(f)):
            return cand
    return None


def _meta(layout: str, **extra) -> dict:
    return {"layout": layout, "units": "rad",
            "convention": "yaw=atan2(-x,-z), pitch=asin(-y) (drmguard.tasks)", **extra}


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _h5py():
    import h5py  # a declared dependency; imported lazily to keep `import drmguard` light

    return h5py


# --- layout: official normalized .mat (HDF5) ----------------------------------------------
def _load_normalized(root: Path, out_hw, show: bool, opts: dict) -> ArrayDataset:
    h5py = _h5py()
    folder = _normalized_dir(root)
    if folder is None:
        raise DrmguardError(f"{NAME}: no pXX.mat files in {root}")
    files = sorted((f for f in folder.glob("*.mat")
                    if not is_junk(f) and _subject_id(f.stem) is not None),
                   key=lambda f: _subject_id(f.stem))
    col = Collector(NAME, root)
    for f in files:
        sid = _subject_id(f.stem)
        if not _wanted(sid, opts):
            continue
        try:
            h5 = h5py.File(f, "r")
        except OSError:
            raise DrmguardError(f"{NAME}: {f} is not a MATLAB v7.3 (HDF5) file") from None
        with h5:
            if "Data/data" not in h5 or "Data/label" not in h5:
                raise DrmguardError(f"{NAME}: {f} lacks Data/data or Data/label")
            data, label = h5["Data/data"], np.asarray(h5["Data/label"], dtype=np.float64)
            if label.ndim == 2 and label.shape[0] in (4, 16) and label.shape[1] == data.shape[0]:
                label = label.T  # stored column-major by another writer
            if (data.ndim != 4 or data.shape[1] != 3 or label.ndim != 2 or label.shape[1] < 2
                    or label.shape[0] != data.shape[0]):
                raise DrmguardError(f"{NAME}: corrupt label/data in {f}: data {data.shape}, "
                                    f"label {label.shape} (expected (n,3,H,W) and (n,16))")
            n = data.shape[0]
            if opts["max_per_subject"]:
                n = min(n, opts["max_per_subject"])
            for i in track(range(n), f"{NAME} {f.stem}", show):
                img = _to_uint8(np.asarray(data[i]).transpose(1, 2, 0))
                if opts["channels"] == "bgr":
                    img = bgr_to_rgb(img)
                # columns 0-1: gaze (pitch, yaw), already in the drmguard sign convention
                col.add(resize_array(Image.fromarray(img), out_hw),
                        (label[i, 1], label[i, 0]), sid)
    return col.build("gaze", TARGET_NAMES, _meta("normalized", channels=opts["channels"]))


# --- layout: one derived .h5 file (hysts or X-Shi) -----------------------------------------
def _load_h5(path: Path, out_hw, show: bool, opts: dict) -> ArrayDataset:
    h5py = _h5py()
    try:
        h5 = h5py.File(path, "r")
    except OSError:
        raise DrmguardError(f"{NAME}: {path} is not an HDF5 file") from None
    col = Collector(NAME, path)
    flavour = "hysts"
    with h5:
        persons = sorted((k for k in h5.keys() if _subject_id(k) is not None), key=_subject_id)
        for person in persons:
            sid = _subject_id(person)
            if not _wanted(sid, opts):
                continue
            grp = h5[person]
            if "image" not in grp or "gaze" not in grp:
                raise DrmguardError(f"{NAME}: {path}:{person} lacks image/ or gaze/")
            # X-Shi's file also holds eye crops and uses pitch=asin(y), yaw=atan2(x,-z)
            sign = 1.0
            if "left" in grp:
                flavour, sign = "xshi", -1.0
            keys = sorted(grp["image"].keys())
            if opts["max_per_subject"]:
                keys = keys[:opts["max_per_subject"]]
            for k in track(keys, f"{NAME} {person}", show):
                if k not in grp["gaze"]:
                    col.skip("images without gaze")
                    continue
                img = _to_uint8(np.asarray(grp["image"][k]))
                if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
                    img = img.transpose(1, 2, 0)
                if opts["channels"] == "bgr":
                    img = bgr_to_rgb(img)
                g = np.asarray(grp["gaze"][k], dtype=np.float64).ravel()
                if g.size < 2:
                    raise DrmguardError(f"{NAME}: corrupt gaze {path}:{person}/gaze/{k}")
                col.add(resize_array(Image.fromarray(img), out_hw),
                        (sign * g[1], sign * g[0]), sid)
    return col.build("gaze", TARGET_NAMES, _meta("h5", flavour=flavour,
                                                  channels=opts["channels"]))


# --- layout: GazeHub ---------------------------------------------------------------------
def _load_gazehub(root: Path, out_hw, show: bool, opts: dict) -> ArrayDataset:
    label_dir, image_dir = root / "Label", root / "Image"
    files = sorted((f for f in label_dir.glob("*.label")
                    if not is_junk(f) and _subject_id(f.stem) is not None),
                   key=lambda f: _subject_id(f.stem))
    if not files:
        raise DrmguardError(f"{NAME}: no pXX.label files in {label_dir}")
    col = Collector(NAME, root)
    for f in files:
        sid = _subject_id(f.stem)
        if not _wanted(sid, opts):
            continue
        lines = read_text_lines(f)
        face_col, gaze_col = 0, 7
        if lines and lines[0].split()[0].lower() == "face":
            header = [h.lower() for h in lines[0].split()]
            if "2dgaze" not in header:
                raise DrmguardError(f"{NAME}: {f} header has no 2DGaze column")
            face_col, gaze_col = header.index("face"), header.index("2dgaze")
            lines = lines[1:]
        if opts["max_per_subject"]:
            lines = lines[:opts["max_per_subject"]]
        for n, line in enumerate(track(lines, f"{NAME} {f.stem}", show), start=2):
            tok = line.split()
            if len(tok) <= max(face_col, gaze_col):
                raise DrmguardError(f"{NAME}: corrupt label file {f}, line {n}: "
                                    f"{len(tok)} fields")
            yaw_pitch = floats(tok[gaze_col].split(","), f"{f}, line {n}")
            if yaw_pitch.size != 2:
                raise DrmguardError(f"{NAME}: corrupt label file {f}, line {n}: 2DGaze "
                                    f"{tok[gaze_col]!r} is not yaw,pitch")
            img_path = image_dir / tok[face_col]
            if not img_path.is_file():
                col.skip("labels without image")
                continue
            col.add(resize_array(open_rgb(img_path), out_hw or (224, 224)), yaw_pitch, sid)
    return col.build("gaze", TARGET_NAMES, _meta("gazehub"))


# --- layout: original release + data normalisation ----------------------------------------
def normalization_rotation(face_center, head_rvec) -> np.ndarray:
    """Rotation R of the normalised camera (rows = its x, y, z axes in camera coordinates).

    z points from the camera to the face centre; y = z × (head x-axis), x = y × z, so the
    normalised camera looks straight at the face with no roll relative to the head.
    """
    fc = np.asarray(face_center, dtype=np.float64).reshape(3)
    rvec = np.asarray(head_rvec, dtype=np.float64).reshape(3)
    head_x = Rotation.from_rotvec(rvec).as_matrix()[:, 0]  # Rodrigues, as cv2.Rodrigues
    z = fc / np.linalg.norm(fc)
    y = np.cross(z, head_x)
    ny = np.linalg.norm(y)
    if ny < 1e-9:
        raise DrmguardError("head x-axis is parallel to the viewing direction; cannot normalise")
    y /= ny
    x = np.cross(y, z)
    x /= np.linalg.norm(x)
    return np.stack([x, y, z])


def normalization_warp(face_center, head_rvec, camera_matrix, focal: float = 960.0,
                       distance: float = 600.0, roi: int = 224):
    """(W, R, S): image warp W = C_n · S · R · C⁻¹, rotation R and scaling S = diag(1,1,d_n/d)."""
    fc = np.asarray(face_center, dtype=np.float64).reshape(3)
    R = normalization_rotation(fc, head_rvec)
    S = np.diag([1.0, 1.0, distance / np.linalg.norm(fc)])
    Cn = np.array([[focal, 0.0, roi / 2.0], [0.0, focal, roi / 2.0], [0.0, 0.0, 1.0]])
    C = np.asarray(camera_matrix, dtype=np.float64).reshape(3, 3)
    W = Cn @ S @ R @ np.linalg.inv(C)
    return W, R, S


def warp_image(image, W: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """Apply the homography ``W`` (source pixel -> output pixel, pixel centres at integers as in
    OpenCV's ``warpPerspective``) with bilinear sampling; outside pixels are black."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    # PIL maps output -> input with pixel centres at +0.5; convert the OpenCV convention.
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    unshift = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    M = shift @ np.linalg.inv(W) @ unshift
    M = M / M[2, 2]
    coeffs = tuple(M.ravel()[:8])
    return np.asarray(img.transform(tuple(out_wh), Image.PERSPECTIVE, coeffs, Image.BILINEAR))


def normalize_sample(frame, camera_matrix, head_rvec, face_center, gaze_target,
                     focal: float = 960.0, distance: float = 600.0, roi: int = 224,
                     scale_gaze: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Normalised face image (roi×roi×3) and gaze (yaw, pitch) in radians for one frame."""
    W, R, S = normalization_warp(face_center, head_rvec, camera_matrix, focal, distance, roi)
    gaze = np.asarray(gaze_target, np.float64).reshape(3) - np.asarray(face_center,
                                                                         np.float64).reshape(3)
    g = (S @ R if scale_gaze else R) @ gaze
    return warp_image(frame, W, (roi, roi)), vector_to_gaze(g / np.linalg.norm(g))


def _camera_matrix(subject_dir: Path) -> np.ndarray:
    from scipy.io import loadmat

    f = subject_dir / "Calibration" / "Camera.mat"
    if not f.is_file():
        raise DrmguardError(f"{NAME}: missing {f}")
    try:
        K = np.asarray(loadmat(str(f))["cameraMatrix"], dtype=np.float64)
    except Exception as e:  # scipy raises several types for bad files
        raise DrmguardError(f"{NAME}: cannot read cameraMatrix from {f}: {e}") from None
    if K.shape != (3, 3):
        raise DrmguardError(f"{NAME}: cameraMatrix in {f} has shape {K.shape}, not 3×3")
    return K


def _load_original(root: Path, out_hw, show: bool, opts: dict) -> ArrayDataset:
    col = Collector(NAME, root)
    roi = opts["roi"]
    subjects = [d for d in _subject_dirs(root) if (d / f"{d.name}.txt").is_file()]
    if not subjects:
        raise DrmguardError(f"{NAME}: no pXX/pXX.txt annotation files in {root}")
    for d in subjects:
        sid = _subject_id(d.name)
        if not _wanted(sid, opts):
            continue
        K = _camera_matrix(d)
        lines = read_text_lines(d / f"{d.name}.txt")
        if opts["max_per_subject"]:
            lines = lines[:opts["max_per_subject"]]
        for n, line in enumerate(track(lines, f"{NAME} {d.name}", show), start=1):
            tok = line.split()
            if len(tok) < 27:
                raise DrmguardError(f"{NAME}: corrupt label file {d / (d.name + '.txt')}, "
                                    f"line {n}: {len(tok)} columns, expected 28")
            v = floats(tok[1:27], f"{d / (d.name + '.txt')}, line {n}")
            rvec, fc, gt = v[14:17], v[20:23], v[23:26]
            frame_path = d / tok[0]
            if not frame_path.is_file():
                col.skip("labels without frame")
                continue
            img, yaw_pitch = normalize_sample(open_rgb(frame_path), K, rvec, fc, gt,
                                              opts["focal"], opts["distance"], roi,
                                              opts["scale_gaze"])
            col.add(resize_array(Image.fromarray(img), out_hw), yaw_pitch, sid)
    return col.build("gaze", TARGET_NAMES, _meta(
        "original", focal=opts["focal"], distance=opts["distance"], roi=roi,
        gaze_normalisation="S·R (scaled)" if opts["scale_gaze"] else "R (modified, rotation only)"))
