import json

import pytest

from drmguard.cli import main
from drmguard.data import save_folder


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_then_eval(tmp_path, toy_dataset, capsys):
    save_folder(toy_dataset, tmp_path / "d", progress=False)
    code, out, err = run(["train", "--data", str(tmp_path / "d"), "--profile", "tiny",
                          "--out", str(tmp_path / "m"), "-q"], capsys)
    assert code == 0, err
    assert (tmp_path / "m" / "model.safetensors").exists()
    code, out, err = run(["eval", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--json",
                          "-q"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == len(toy_dataset) and res["error"] > 0
    assert set(res["per_component"]) == {"a", "b"}
    # the model directory is never overwritten
    code, out, err = run(["train", "--data", str(tmp_path / "d"), "--profile", "tiny",
                          "--out", str(tmp_path / "m"), "-q"], capsys)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [
    (["eval", "/nonexistent/model", "--data", "/nonexistent/data"], "does not exist"),
    (["train", "--data", "/nonexistent", "--out", "OUT"], "does not exist"),
    (["train", "--data", "DATA", "--out", "OUT", "--profile", "huge"], "unknown profile"),
    (["data", "synth", "--task", "pose", "--out", "OUT"], "gaze and headpose"),
    (["experiment", "identification", "--task", "age"], "synthetic tasks"),
    (["experiment", "identification", "--benign", "0"], "at least 1"),
    (["experiment", "identification", "--attacks", "badnets,wanet:x"], "bad model count"),
    (["experiment", "identification", "--attacks", "wanet:0"], "at least 1"),
    (["experiment", "attacks", "--seeds", "0"], "--seeds must be at least 1"),
    (["experiment", "attacks", "--benign", "0", "--plan"], "--benign must be at least 1"),
    (["experiment", "attacks", "--attacks", "badnet"], "badnet"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys, toy_dataset, args, needle):
    monkeypatch.chdir(tmp_path)
    save_folder(toy_dataset, tmp_path / "DATA", progress=False)
    code, out, err = run(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("drmguard: error:")


def test_usage_error_exit_2(capsys):
    code, out, err = run(["train", "--bogus"], capsys)
    assert code == 2


def test_demo_tiny_trains_once_then_reuses_the_cached_models(tmp_path, capsys):
    args = ["demo", "--profile", "tiny", "--cache", str(tmp_path / "zoo"), "-q", "--report",
            str(tmp_path / "rep")]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "training the benign demo model" in out and "training the badnets" in out
    assert "DRMGuard scan" in out and "mitigation" in out
    # the reports of both scans, with the pictures of the reversed trigger, and their paths
    for sub in ("backdoored", "benign"):
        page = tmp_path / "rep" / sub / "index.html"
        assert page.exists() and str(page) in out.replace("\n", "")
        assert (tmp_path / "rep" / sub / "img" / "reversed_0.png").exists()
    assert "recorded target" in (tmp_path / "rep" / "backdoored" / "index.html").read_text()
    models = sorted(p.name for p in (tmp_path / "zoo" / "models").iterdir())
    assert len(models) == 2
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "using the cached benign model" in out and "training" not in out
    assert sorted(p.name for p in (tmp_path / "zoo" / "models").iterdir()) == models


def test_experiment_plans_train_nothing(tmp_path, capsys):
    code, out, err = run(["experiment", "identification", "--profile", "tiny", "--attacks",
                          "badnets", "--benign", "1", "--backdoored", "1", "--plan",
                          "--cache", str(tmp_path / "zoo"), "--out", str(tmp_path / "res")],
                         capsys)
    assert code == 0, err
    assert "train   gaze/badnets/seed0" in out
    assert "to do: 2 models, 2 detections, no time recorded in this cache" in out
    assert not (tmp_path / "zoo").exists() and not (tmp_path / "res").exists()
    code, out, err = run(["experiment", "mitigation", "--profile", "tiny", "--attacks",
                          "badnets:1", "--backdoored", "3", "--mitigations", "drmguard,ft",
                          "--plan", "--cache", str(tmp_path / "zoo")], capsys)
    assert code == 0, err
    assert "mitigate gaze/badnets/seed0 with ft" in out
    assert "to do: 1 models, 2 mitigations" in out and not (tmp_path / "zoo").exists()
