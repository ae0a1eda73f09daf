"""Columbia Gaze Data Set (Smith et al., UIST 2013): 56 subjects × 105 images, 5184×3456 JPEGs.

Layout: ``<root>/NNNN/NNNN_2m_{P}P_{V}V_{H}H.jpg`` (any depth is searched; the subject id comes
from the file name, which always agrees with the folder). P is the horizontal head pose
(0, ±15, ±30°), V the vertical gaze (0, ±10°) and H the horizontal gaze (0, ±5, ±10, ±15°),
all signed integers in degrees; the 0V/0H image of each pose is the "gaze-locking" shot.

Output: task ``gaze`` with targets (yaw, pitch) = (H, V) converted to radians, i.e. the
file-name angles taken as the gaze direction's yaw and pitch. The sign of H and V relative to
the drmguard convention could not be checked without the images (see docs/datasets.md). With
``with_head=1`` the task becomes ``generic`` with a third target ``head_yaw`` = P in radians.

The release has no landmarks, so the face is a fixed square crop: side ``crop`` × the image
height, centred at (``center_x``, ``center_y``) in fractions of the width/height; the defaults
are a guess for the 5184×3456 frames (head near the centre) and should be checked with
``drmguard data preview``. Images are resized to ``size`` (default 224, as in the paper).
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import DrmguardError
from ._realdata import (Collector, Opt, crop_resize, is_junk, open_rgb, parse_id_list,
                        parse_options, parse_size, require_dir, track)
from .base import ArrayDataset

NAME = "columbiagaze"
FILENAME_RE = re.compile(r"(\d{4})_(\d+)m_(-?\d+)P_(-?\d+)V_(-?\d+)H\.jpe?g", re.IGNORECASE)
DEFAULT_SIZE = 224

OPTIONS = {
    "crop": Opt(0.5, float, None, "side of the square face crop, as a fraction of the image "
                                  "height (1 = no crop in height)"),
    "center_x": Opt(0.5, float, None, "crop centre, fraction of the width"),
    "center_y": Opt(0.5, float, None, "crop centre, fraction of the height"),
    "with_head": Opt(False, bool, None, "add head yaw P as a third target (generic task)"),
    "subjects": Opt("", str, None, "only these subject ids, e.g. 1-10,12"),
}


def parse_name(name: str) -> dict | None:
    """Fields of a Columbia file name, or None if it does not match the pattern."""
    m = FILENAME_RE.fullmatch(name)
    if not m:
        return None
    subject, dist, p, v, h = (int(g) for g in m.groups())
    return {"subject": subject, "distance_m": dist, "head_yaw": p, "gaze_v": v, "gaze_h": h}


def load(path: str, size=None, progress: bool = True, **options) -> ArrayDataset:
    """Load ColumbiaGaze from ``path`` (the unzipped 'Columbia Gaze Data Set' folder)."""
    opts = parse_options(NAME, options, OPTIONS)
    if not 0 < opts["crop"] <= 1.5:
        raise DrmguardError(f"{NAME}: crop must be in (0, 1.5], got {opts['crop']}")
    out_hw = parse_size(size) or (DEFAULT_SIZE, DEFAULT_SIZE)
    root = require_dir(path, NAME)
    keep = parse_id_list(opts["subjects"])
    files = []
    for f in sorted(root.rglob("*")):
        if not f.is_file() or is_junk(f):
            continue
        info = parse_name(f.name)
        if info is not None and (keep is None or info["subject"] in keep):
            files.append((f, info))
    col = Collector(NAME, root)
    for f, info in track(files, NAME, progress):
        # decode at reduced resolution when the crop still has enough pixels
        img = open_rgb(f, min_height=int(np.ceil(max(out_hw) / min(opts["crop"], 1.0))))
        w, h = img.size
        side = opts["crop"] * h
        face = crop_resize(img, (opts["center_x"] * w, opts["center_y"] * h), side, out_hw)
        target = [np.deg2rad(info["gaze_h"]), np.deg2rad(info["gaze_v"])]
        if opts["with_head"]:
            target.append(np.deg2rad(info["head_yaw"]))
        col.add(face, target, info["subject"])
    names = ["yaw", "pitch"] + (["head_yaw"] if opts["with_head"] else [])
    meta = {"layout": "original", "units": "rad", "crop": opts["crop"],
            "center": [opts["center_x"], opts["center_y"]],
            "convention": "yaw = H, pitch = V from the file name (signs unverified)"}
    return col.build("generic" if opts["with_head"] else "gaze", names, meta)

