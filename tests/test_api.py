"""The top-level API (``import drmguard``): what the CLI calls, usable from Python."""

import json
import subprocess
import sys

import pytest

import drmguard
from drmguard.errors import DrmguardError
from drmguard.models import RegressionModel
from _files import write_gaze_folder, write_model_dir, write_plain_torchscript


@pytest.fixture
def files(tmp_path):
    write_model_dir(tmp_path / "m", 0)
    write_plain_torchscript(tmp_path / "plain.pt", 1)
    write_gaze_folder(tmp_path / "d")
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
