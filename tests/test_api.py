"""The top-level API (``import drmguard``): what the CLI calls, usable from Python."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import drmguard
from drmguard.data import save_folder
from drmguard.data.base import ArrayDataset
from drmguard.errors import DrmguardError
from drmguard.models import RegressionModel, build_model
from drmguard.models.io import model_meta, save_model
from drmguard.tasks import GAZE


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    m = RegressionModel(build_model("small_resnet", 2, widths=[4, 8]), (16, 16)).eval()
    save_model(m, tmp_path / "m", model_meta(m, "small_resnet", GAZE, {"widths": [4, 8]}))
    torch.manual_seed(1)
    torch.jit.script(build_model("small_resnet", 2, widths=[4, 8]).eval()).save(
        str(tmp_path / "plain.pt"))
    g = np.random.default_rng(0)
    ds = ArrayDataset(g.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8),
                      g.uniform(-0.3, 0.3, (20, 2)).astype(np.float32), "gaze",
                      target_names=["yaw", "pitch"])
    save_folder(ds, tmp_path / "d", progress=False)
    return tmp_path


def test_import_is_cheap_and_exports_the_api():
    code = ("import sys, drmguard; assert 'torch' not in sys.modules; "
            "print(sorted(drmguard.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    for name in ("scan", "mitigate", "detect", "load_model", "load_dataset", "get_task",
                 "write_report", "DETECTORS", "ATTACKS"):
        assert f"'{name}'" in out
    assert drmguard.get_task("gaze").dim == 2


def test_scan_from_paths_matches_the_cli(files, capsys):
    from drmguard.cli import main

    res = drmguard.scan(str(files / "m"), str(files / "d"), profile="tiny", seed=0,
                        progress=False)
    assert res.status in ("backdoored", "benign", "no cheap trigger found")
    assert main(["scan", str(files / "m"), "--data", str(files / "d"), "--profile", "tiny",
                 "--json", "-", "-q"]) == 0
    cli = json.loads(capsys.readouterr().out)
    api = res.to_dict()
    for key in ("R", "score", "status", "collapse_ratio", "target_estimate", "config"):
        assert cli[key] == api[key], key
    page = drmguard.write_report(res, files / "rep")
    assert page.exists()


def test_mitigate_reuses_the_scan_and_detect_takes_any_detector(files):
    model, meta = drmguard.load_model(files / "m")
    data = drmguard.load_dataset(str(files / "d"))
    res = drmguard.scan(model, data, "gaze", profile="tiny", progress=False)
    fixed, info = drmguard.mitigate(model, data, "gaze", profile="tiny", prior=res,
                                    progress=False)
    assert info["scan_reused"] and info["scan"]["R"] == res.r_score
    assert isinstance(fixed, RegressionModel) and fixed is not model
    det = drmguard.detect(model, data, "nc", profile="tiny", epochs=2, progress=False)
    assert det.defense == "nc" and det.result is not None
    _, ft = drmguard.mitigate(model, data, defence="ft", profile="tiny", epochs=1,
                              progress=False)
    assert ft["defense"] == "ft"
    out = drmguard.save_model(fixed, files / "fixed", meta)
    assert drmguard.load_model(out)[0].num_outputs == 2


def test_prepare_takes_a_missing_input_size_from_the_data(files):
    model, meta, ds, task = drmguard.prepare(str(files / "plain.pt"), str(files / "d"),
                                             progress=False)
    assert model.input_size == (16, 16) and task.name == "gaze"
    assert "using the data's 16×16" in meta["notes"][0]


def test_library_errors_name_parameters_the_cli_names_flags(files, capsys):
    from drmguard.cli import main

    with pytest.raises(DrmguardError, match="`columns` names a column twice"):
        drmguard.prepare(str(files / "m"), str(files / "d"), columns="yaw,yaw")
    with pytest.raises(DrmguardError, match="unknown task"):
        drmguard.prepare(str(files / "m"), str(files / "d"), task="age")
    assert main(["scan", str(files / "m"), "--data", str(files / "d"), "--columns",
                 "yaw,yaw", "-q"]) == 2
    assert "--columns names a column twice" in capsys.readouterr().err
