"""The HTML scan report (report.py)."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from drmguard.errors import DrmguardError
from drmguard.report import SCHEMA, find_chromium, json_safe, screenshot, write_report


def scan_result(**over):
    r = {
        "schema": SCHEMA, "verdict": True, "status": "backdoored", "score": 0.0062,
        "threshold": 0.03, "collapse_ratio": 0.04, "target_estimate": [-0.29, 0.24],
        "target_names": ["yaw", "pitch"],
        "trajectory": [[s, [0.1 - 0.0004 * s, 0.0003 * s]] for s in range(0, 1001, 100)],
        "timings": {"attention": 1.5, "search": 200.0, "total": 210.0},
        "config": {"generator": "residual", "steps": 1000, "lambda1": 20.0, "tau": 0.03,
                   "collapse_threshold": 0.25, "notes": {"calibration": "gaze zoo"}},
        "model": "models/gaze", "data": "data/benign",
    }
    r.update(over)
    return r


def scan_images(n=4, size=16, channels=3):
    g = np.random.default_rng(0)
    benign = g.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    reversed_ = benign.copy()
    reversed_[:, -4:, -4:] = 255
    residual = np.abs(reversed_.astype(int) - benign.astype(int)).astype(np.uint8)
    att = np.zeros((size, size))
    att[4:8, 2:14] = 0.9
    return {"benign": benign, "reversed": reversed_, "residual": residual, "attention": att}


def embedded_pngs(page):
    return [Image.open(io.BytesIO(base64.b64decode(m)))
            for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_full_report(tmp_path):
    index = write_report(scan_result(), scan_images(), tmp_path / "rep")
    page = index.read_text()
    assert index.name == "index.html" and "BACKDOOR DETECTED" in page
    assert "0.0062" in page and "0.03" in page and "&lt;" in page  # R < τ
    assert "yaw" in page and "pitch" in page and "-0.29" in page
    # 3 rows × 4 images + attention + trajectory, all embedded and all written as files
    pngs = embedded_pngs(page)
    assert len(pngs) == 3 * 4 + 2
    assert pngs[0].size == (16, 16)
    files = sorted(p.name for p in (tmp_path / "rep" / "img").iterdir())
    assert "attention.png" in files and "trajectory.png" in files and "reversed_3.png" in files
    # the embedded benign image is the input image itself
    np.testing.assert_array_equal(np.asarray(pngs[0]), scan_images()["benign"][0])
    saved = json.loads((tmp_path / "rep" / "result.json").read_text())
    assert saved["schema"] == SCHEMA and saved["score"] == 0.0062
    assert "config.notes.calibration" not in page and "notes.calibration" in page  # flattened
    assert "http://" not in page and "https://" not in page  # nothing fetched from a server


def test_clean_verdict_and_grayscale(tmp_path):
    imgs = scan_images(n=2, channels=1)
    page = write_report(scan_result(verdict=False, score=0.08, status="clean"), imgs,
                        tmp_path / "r").read_text()
    assert "No backdoor found" in page and "&ge;" in page
    assert len(embedded_pngs(page)) == 3 * 2 + 2


def test_minimal_result_still_renders(tmp_path):
    page = write_report({"verdict": None}, {}, tmp_path / "r").read_text()
    assert "No verdict" in page and "n/a" in page
    assert embedded_pngs(page) == []
    page = write_report({"verdict": True, "score": float("nan"), "trajectory": [[0, [1.0]], "junk"],
                         "target_estimate": [1.0, 2.0], "target_names": ["only one"]}, None,
                        tmp_path / "r2").read_text()
    assert "y0" in page and "y1" in page  # names of the wrong length are replaced
    saved = json.loads((tmp_path / "r2" / "result.json").read_text())
    assert saved["score"] is None  # NaN is not valid JSON


def test_strings_are_escaped(tmp_path):
    page = write_report(scan_result(model="<script>alert(1)</script>", status="<b>x</b>"), {},
                        tmp_path / "r").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page


def test_linked_images_and_no_overwrite(tmp_path):
    out = tmp_path / "r"
    page = write_report(scan_result(), scan_images(), out, embed=False).read_text()
    assert 'src="img/benign_0.png"' in page and "base64" not in page
    with pytest.raises(DrmguardError, match="already exists"):
        write_report(scan_result(), {}, out)
    write_report(scan_result(verdict=False), {}, out, overwrite=True)
    assert "No backdoor found" in (out / "index.html").read_text()


def test_bad_attention_shape(tmp_path):
    with pytest.raises(DrmguardError, match="H×W"):
        write_report(scan_result(), {"attention": np.zeros((2, 3, 4, 5))}, tmp_path / "r")


def test_json_safe():
    out = json_safe({"a": np.float32(1.5), "b": np.arange(3), "c": (1, float("inf")),
                     "d": {"e": np.bool_(True)}})
    assert out == {"a": 1.5, "b": [0, 1, 2], "c": [1, None], "d": {"e": True}}
    json.dumps(out)


@pytest.mark.skipif(find_chromium() is None, reason="headless Chromium is not installed")
def test_report_renders_in_chromium(tmp_path):
    index = write_report(scan_result(), scan_images(), tmp_path / "rep")
    png = screenshot(index, tmp_path / "shot.png", width=900, height=900)
    shot = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert shot.shape[:2] == (900, 900)
    # the red verdict badge (#c62828) was painted, so the page and its CSS rendered
    red = (np.abs(shot - [0xC6, 0x28, 0x28]).sum(-1) < 30).sum()
    assert red > 2000
    # and the embedded images appear: many distinct colours beyond the page's palette
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 500


def test_scan_result_object(tmp_path):
    """The real ScanResult (its to_dict spelling: backdoored, R, tau, trajectory dicts)."""
    from drmguard.defenses.drmguard.scan import ScanResult
    from drmguard.report import write_scan_report

    imgs = scan_images(n=3)
    res = ScanResult(
        backdoored=False, status="no cheap trigger found", r_score=0.0002, tau=0.03,
        collapse_ratio=0.9, collapse_threshold=0.25, score=-1.9, target_estimate=[0.1, -0.2],
        trajectory=[(0, [0.0, 0.0]), (10, [0.1, -0.2])], benign_images=imgs["benign"],
        reversed_images=imgs["reversed"], residual_images=imgs["residual"], residual_scale=0.1,
        attention=imgs["attention"].astype(np.float32), timings={"total": 3.0},
        config={"tau": 0.03, "steps": 10}, task="gaze", target_names=["yaw", "pitch"])
    index = write_scan_report(res, tmp_path / "r", extra={"model": "m.pt", "data": "d"})
    page = index.read_text()
    assert "No backdoor found" in page and "no cheap trigger found" in page
    assert "R = <b>2.000e-04</b> &lt; τ = <b>0.03</b>" in page  # R, not the detection score
    assert "0.9</b> (outputs collapse when &lt; 0.25)" in page
    assert "m.pt" in page and "divided by 0.1" in page
    assert len(embedded_pngs(page)) == 3 * 3 + 2  # grid + attention + trajectory
    saved = json.loads((tmp_path / "r" / "result.json").read_text())
    assert saved["R"] == 0.0002 and saved["score"] == -1.9 and saved["model"] == "m.pt"
