"""Tiny on-disk copies of the four real datasets, in their documented layouts.

Each builder writes into a folder (normally pytest's ``tmp_path``) and returns the ground truth
the loader must recover, so tests compare against values computed here independently of the
loaders (angles from explicit rotation-matrix formulas, not from the loader's helpers). The
fixtures include the awkward cases real archives have: ``.DS_Store`` and ``__MACOSX`` junk,
non-matching file names, labels without images and images without labels, trailing spaces,
blank lines and CRLF line ends, and BGR channel order where the format stores BGR.

Images carry a known colour patch so tests can check the channel order and the crop position.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from scipy.io import savemat

RED = (230, 20, 30)
GREEN = (20, 220, 40)
BLUE = (25, 30, 235)


# --- small helpers -----------------------------------------------------------------------
def rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def biwi_matrix_fsanet(yaw, pitch, roll):
    """Pose-file matrix R whose FSA-Net angles are (yaw, pitch, roll) degrees:
    M = Rz(-roll)·Ry(-yaw)·Rx(pitch) and R = Mᵀ (FSA-Net's TYY_create_db_biwi.py inverted)."""
    y, p, r = np.deg2rad([yaw, pitch, roll])
    return (rot_z(-r) @ rot_y(-y) @ rot_x(p)).T


def _junk(folder: Path) -> None:
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


def _patch_image(h, w, color, center=None, half=None, background=(90, 90, 90)):
    img = np.empty((h, w, 3), np.uint8)
    img[:] = background
    cy, cx = center if center is not None else (h // 2, w // 2)
    half = half if half is not None else max(2, min(h, w) // 6)
    img[max(0, cy - half):cy + half, max(0, cx - half):cx + half] = color
    return img


# --- MPIIFaceGaze ------------------------------------------------------------------------
def make_mpii_normalized(root: Path, subjects=(0, 1), n: int = 3, side: int = 32) -> dict:
    """``MPIIFaceGaze_normalizad/pXX.mat`` (HDF5): Data/data (n,3,side,side) **BGR** uint8 with a
    red centre patch, Data/label (n,16) with gaze (pitch, yaw) in columns 0-1."""
    folder = root / "MPIIFaceGaze_normalizad"
    folder.mkdir(parents=True)
    _junk(folder)
    (folder / "readme.txt").write_text("not a subject file\n")
    rng = np.random.default_rng(0)
    truth = {"yaw_pitch": [], "subjects": []}
    for s in subjects:
        rgb = np.stack([_patch_image(side, side, RED)] * n)  # n,H,W,3 RGB
        data = rgb[..., ::-1].transpose(0, 3, 1, 2)  # stored BGR, (n,3,H,W)
        label = rng.uniform(-0.4, 0.4, size=(n, 16))
        with h5py.File(folder / f"p{s:02d}.mat", "w") as f:
            f.create_dataset("Data/data", data=data.astype(np.uint8))
            f.create_dataset("Data/label", data=label)
        truth["yaw_pitch"] += [(lb[1], lb[0]) for lb in label]
        truth["subjects"] += [s] * n
    truth["yaw_pitch"] = np.array(truth["yaw_pitch"])
    return truth


def make_mpii_gazehub(root: Path, subjects=(0, 3), n: int = 3, side: int = 24) -> dict:
    """``Image/pXX/face/N.jpg`` + ``Label/pXX.label`` (header; 2DGaze = yaw,pitch). One label row
    per subject points to a missing image; the label files have trailing spaces, a blank line
    and CRLF line ends."""
    (root / "Label").mkdir(parents=True)
    _junk(root / "Label")
    header = "Face Left Right Origin WhichEye 3DGaze 3DHead 2DGaze 2DHead Rmat Smat GazeOrigin"
    truth = {"yaw_pitch": [], "subjects": []}
    for s in subjects:
        face_dir = root / "Image" / f"p{s:02d}" / "face"
        face_dir.mkdir(parents=True)
        rows = [header]
        for i in range(1, n + 2):
            yaw, pitch = 0.1 * i - 0.2 + 0.01 * s, -0.05 * i
            face = f"p{s:02d}/face/{i}.jpg"
            if i <= n:  # the last row has no image
                Image.fromarray(_patch_image(side, side, GREEN)).save(root / "Image" / face,
                                                                      quality=95)
                truth["yaw_pitch"].append((yaw, pitch))
                truth["subjects"].append(s)
            rows.append(f"{face} p{s:02d}/left/{i}.jpg p{s:02d}/right/{i}.jpg day01/{i:04d}.jpg "
                        f"left 0.1,0.2,-0.97 0.0,0.1,0.0 {yaw},{pitch} 0.01,0.02 0.1,0.0,0.0 "
                        f"1,1,1.2 10,20,600   ")
        rows.insert(2, "")
        (root / "Label" / f"p{s:02d}.label").write_bytes("\r\n".join(rows).encode() + b"\r\n")
    truth["yaw_pitch"] = np.array(truth["yaw_pitch"])
    return truth


def write_mpii_original_subject(root: Path, subject: int, camera: np.ndarray,
                                samples: list[dict]) -> Path:
    """``pXX/pXX.txt`` (28 columns) + ``Calibration/Camera.mat`` + ``dayNN/NNNN.jpg`` frames.

    Each sample: ``frame`` (H×W×3 uint8 RGB or None = frame file missing), ``rvec``, ``tvec``,
    ``fc``, ``gt`` (3 each).
    """
    d = root / f"p{subject:02d}"
    (d / "Calibration").mkdir(parents=True)
    (d / "day01").mkdir()
    _junk(d)
    savemat(str(d / "Calibration" / "Camera.mat"),
            {"cameraMatrix": camera, "distCoeffs": np.zeros((1, 5))})
    lines = []
    for i, smp in enumerate(samples, start=1):
        rel = f"day01/{i:04d}.jpg"
        if smp["frame"] is not None:
            Image.fromarray(smp["frame"]).save(d / rel, quality=98)
        nums = ([640, 360] + [100 + k for k in range(12)] + list(smp["rvec"]) + list(smp["tvec"])
                + list(smp["fc"]) + list(smp["gt"]))
        lines.append(" ".join([rel] + [f"{v:.6f}" for v in nums] + ["left"]) + " ")
    (d / f"p{subject:02d}.txt").write_text("\n".join(lines) + "\n\n")
    return d


# --- ColumbiaGaze ------------------------------------------------------------------------
COLUMBIA_NAMES = [(-15, 10, -5), (0, 0, 0), (30, -10, 15)]  # (P, V, H) degrees


def make_columbia(root: Path, subjects=(1, 2, 3, 4, 5, 6), size=(60, 90)) -> dict:
    """``Columbia Gaze Data Set/NNNN/NNNN_2m_{P}P_{V}V_{H}H.jpg`` with a red centre patch on a blue
    frame, plus .DS_Store, __MACOSX AppleDouble files and a non-matching name."""
    base = root / "Columbia Gaze Data Set"
    h, w = size
    truth = {"targets": [], "subjects": [], "head_yaw": []}
    for s in subjects:
        d = base / f"{s:04d}"
        d.mkdir(parents=True)
        _junk(d)
        (d / f"{s:04d}_notes.txt").write_text("not an image")
        mac = root / "__MACOSX" / "Columbia Gaze Data Set" / f"{s:04d}"
        mac.mkdir(parents=True)
        for p, v, hh in COLUMBIA_NAMES:
            img = _patch_image(h, w, RED, half=h // 5, background=BLUE)
            name = f"{s:04d}_2m_{p}P_{v}V_{hh}H.jpg"
            Image.fromarray(img).save(d / name, quality=95)
            (mac / f"._{name}").write_bytes(b"\x00\x05\x16\x07")
            truth["targets"].append((np.deg2rad(hh), np.deg2rad(v)))
            truth["head_yaw"].append(np.deg2rad(p))
            truth["subjects"].append(s)
    truth["targets"] = np.array(truth["targets"])
    truth["head_yaw"] = np.array(truth["head_yaw"])
    return truth


# --- Biwi --------------------------------------------------------------------------------
BIWI_ANGLES = [(30.0, -20.0, 10.0), (-45.0, 15.0, -5.0), (5.0, 40.0, 25.0)]  # yaw, pitch, roll
BIWI_K_RGB = np.array([[130.0, 0, 80.0], [0, 130.0, 60.0], [0, 0, 1]])
BIWI_T_RGB = np.array([-24.0, 5.9, -13.2])


def _cal_text(K, R, t) -> str:
    rows = [" ".join(f"{v:g}" for v in r) + " " for r in K]
    return ("\n".join(rows) + "\n\n0 0 0 0 \n\n" + "\n".join(" ".join(f"{v:g}" for v in r)
                                                           for r in R)
            + "\n\n" + " ".join(f"{v:g}" for v in t) + " \n")


def make_biwi(root: Path, sequences=(1, 2, 3), size=(120, 160)) -> dict:
    """``hpdb/NN/frame_XXXXX_{rgb.png,pose.txt}`` + ``rgb.cal``/``depth.cal``. Pose files have
    trailing spaces and the blank line; frame 00007 has no pose and frame 00009 no image.
    A green patch marks the head centre projected into the RGB image (with the extrinsics)."""
    h, w = size
    base = root / "hpdb"
    truth = {"angles": [], "subjects": [], "head_pixel": []}
    for seq in sequences:
        d = base / f"{seq:02d}"
        d.mkdir(parents=True)
        _junk(d)
        (d / "rgb.cal").write_text(_cal_text(BIWI_K_RGB, np.eye(3), BIWI_T_RGB))
        (d / "depth.cal").write_text(_cal_text(
            np.array([[575.816, 0, 320], [0, 575.816, 240], [0, 0, 1]]), np.eye(3), np.zeros(3)))
        for k, (yaw, pitch, roll) in enumerate(BIWI_ANGLES):
            frame = 3 + k
            center = np.array([40.0 * (k - 1), -20.0 + 10 * seq, 950.0 + 30 * k])
            x = center + BIWI_T_RGB
            u, v = (BIWI_K_RGB @ x)[:2] / x[2]
            img = _patch_image(h, w, GREEN, center=(int(round(v)), int(round(u))), half=3)
            Image.fromarray(img).save(d / f"frame_{frame:05d}_rgb.png")
            R = biwi_matrix_fsanet(yaw, pitch, roll)
            text = "".join(" ".join(f"{val:.6f}" for val in row) + " \n" for row in R)
            text += "\n" + " ".join(f"{val:g}" for val in center) + " \n"
            (d / f"frame_{frame:05d}_pose.txt").write_text(text)
            truth["angles"].append((yaw, pitch, roll))
            truth["subjects"].append(seq)
            truth["head_pixel"].append((u, v))
        Image.fromarray(_patch_image(h, w, RED)).save(d / "frame_00007_rgb.png")
        (d / "frame_00009_pose.txt").write_text(
            "".join(" ".join(f"{val:.6f}" for val in row) + "\n" for row in np.eye(3))
            + "\n0 0 900\n")
    truth["angles"] = np.array(truth["angles"])
    return truth


def make_biwi_poseidon(root: Path, sequences=(11, 12), kind: str = "depth", side: int = 20) -> dict:
    """``face_dataset_large/NN/angles.txt`` (tab-separated: frame roll pitch yaw u v X Y Z) next to
    grey ``frame_XXXXX_face_<kind>.png`` crops; frame 00006 has a label but no image."""
    base = root / "face_dataset_large"
    truth = {"angles": [], "subjects": []}
    for seq in sequences:
        d = base / f"{seq:02d}"
        d.mkdir(parents=True)
        _junk(d)
        lines = []
        for frame in range(3, 7):
            roll, pitch, yaw = -2.6 + frame, -10.9 - frame, 1.82 * frame + seq
            lines.append("\t".join([f"{frame:05d}", f"{roll:g}", f"{pitch:g}", f"{yaw:g}",
                                    "378.407", "197.074", "91.2978", "-67.0995", "900.081"]))
            if frame == 6:
                continue
            Image.fromarray(np.full((side, side), 40 * frame, np.uint8)).save(
                d / f"frame_{frame:05d}_face_{kind}.png")
            truth["angles"].append((yaw, pitch, roll))
            truth["subjects"].append(seq)
        (d / "angles.txt").write_text("\n".join(lines) + "\n")
    truth["angles"] = np.array(truth["angles"])
    return truth


# --- Pandora -----------------------------------------------------------------------------
def make_pandora(root: Path, subjects=(1, 2, 18, 19), frames: int = 2, size=(288, 512),
                 pickle_subjects=(18,)) -> dict:
    """``pandora/SS/base_1_IDSS/RGB/NNNNNN_RGB.png`` + ``data.json`` (``data.p`` pickle for
    ``pickle_subjects``). Joints are in 1920×1080 colour coordinates; a blue patch marks the
    head joint. Each sequence also has a label without image and an image without label."""
    h, w = size
    scale = w / 1920.0
    base = root / "pandora"
    truth = {"angles": [], "subjects": [], "head_pixel": []}
    for s in subjects:
        seq = base / f"{s:02d}" / f"base_1_ID{s:02d}"
        (seq / "RGB").mkdir(parents=True)
        (seq / "DEPTH").mkdir()
        _junk(seq / "RGB")
        records = []
        for k in range(frames + 1):
            num = 10 + k
            head = np.array([900.0 + 60 * k, 300.0 + 20 * s])
            euler = {"roll": 5.0 * k - s, "pitch": -12.0 + k, "yaw": 30.0 - 7 * k + s}
            joints = [[0.0, 0.0]] * 3 + [head.tolist()] + [[1.0, 1.0]] * 21
            joints3d = [[0.0, 0.0, 1.2]] * 3 + [[0.1, 0.2, 1.0]] + [[0.0, 0.0, 1.2]] * 21
            records.append({"ts": 1000 + k, "frame_num": num,
                            "orientation": {"euler": euler, "quaternion": [1.0, 0, 0, 0]},
                            "shoulder_orientation": {"euler": {"roll": 0, "pitch": 0, "yaw": 0}},
                            "joints": joints, "joints3D": joints3d, "jointsRGB": joints,
                            "jointsState": [2] * 25})
            if k == frames:  # last record: no image
                continue
            hp = head * scale
            img = _patch_image(h, w, BLUE, center=(int(round(hp[1])), int(round(hp[0]))),
                               half=4)
            Image.fromarray(img).save(seq / "RGB" / f"{num:06d}_RGB.png")
            truth["angles"].append((euler["yaw"], euler["pitch"], euler["roll"]))
            truth["subjects"].append(s)
            truth["head_pixel"].append(hp)
        Image.fromarray(_patch_image(h, w, RED)).save(seq / "RGB" / f"{99:06d}_RGB.png")
        if s in pickle_subjects:
            (seq / "data.p").write_bytes(pickle.dumps(records, protocol=2))
        else:
            (seq / "data.json").write_text(json.dumps(records, indent=1))
    truth["angles"] = np.array(truth["angles"])
    return truth
