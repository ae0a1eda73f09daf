"""Bad input through the command line: ONE clear line on stderr and exit code 2, every time.

Each case builds its broken input in a temporary directory, runs ``drmguard.cli.main([...])``
and checks the exit code, that stderr is a single ``drmguard: error:`` line, and that the line
says what is wrong. Cases for ``scan``/``mitigate`` are skipped until those commands exist.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from drmguard.cli import app, main
from drmguard.data import ArrayDataset, save_folder
from drmguard.models import RegressionModel, build_model
from drmguard.models.io import export_torchscript, model_meta, save_model
from _payload import write_payload


def command_options(name: str) -> set[str] | None:
    """The option names of ``drmguard NAME``, or None when the command does not exist."""
    import typer

    cmd = typer.main.get_command(app).commands.get(name)
    if cmd is None:
        return None
    return {opt for p in cmd.params for opt in getattr(p, "opts", [])}


def needs(command: str, *options: str):
    """Skip until ``drmguard COMMAND`` exists with all ``options``."""
    have = command_options(command)
    missing = None if have is None else [o for o in options if o not in have]
    return pytest.mark.skipif(have is None or bool(missing),
                              reason=f"`drmguard {command}` " + (
                                  "does not exist yet" if have is None else
                                  f"has no {', '.join(missing or [])} yet"))


# --- building blocks ------------------------------------------------------------------------
def dataset(n=12, size=16, k=2, channels=3, seed=0, names=None):
    g = np.random.default_rng(seed)
    return ArrayDataset(g.integers(0, 256, (n, size, size, channels), dtype=np.uint8),
                        g.normal(size=(n, k)).astype(np.float32), "generic",
                        np.repeat(np.arange(3), n // 3) if n % 3 == 0 else None,
                        names or [f"t{i}" for i in range(k)])


def write_data(path, **kw):
    save_folder(dataset(**kw), path, progress=False)
    return str(path)


def tiny_model(k=2, channels=3, size=16):
    torch.manual_seed(0)
    net = build_model("small_resnet", k, channels, widths=[4, 8])
    return RegressionModel(net, (size, size), channels, [0.5] * channels,
                           [0.25] * channels).eval()


def write_model(path, **kw):
    m = tiny_model(**kw)
    save_model(m, path, model_meta(m, "small_resnet", None, {"widths": [4, 8]}))
    return str(path)


def csv_folder(path, text, images=()):
    (path / "images").mkdir(parents=True)
    for name in images:
        from PIL import Image

        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path / "images" / name)
    (path / "labels.csv").write_text(text)
    return str(path)


class Vec3(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x.mean((2, 3))).unsqueeze(-1)


def expect_one_line(capsys, args, needle):
    capsys.readouterr()  # drop whatever building the inputs printed
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}, stderr: {err}"
    assert len(lines) == 1, f"expected one line, got: {err}"
    assert lines[0].startswith("drmguard: error:"), lines[0]
    assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


# --- model files (through `drmguard eval`) ---------------------------------------------------
def test_missing_model(tmp_path, capsys):
    expect_one_line(capsys, ["eval", tmp_path / "nope", "--data", write_data(tmp_path / "d")],
                    "does not exist")


def test_random_bytes_model(tmp_path, capsys):
    (tmp_path / "m.pt").write_bytes(b"\x01\x02garbage" * 10)
    expect_one_line(capsys, ["eval", tmp_path / "m.pt", "--data", write_data(tmp_path / "d")],
                    "cannot recognise")


def test_empty_model_file(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"")
    expect_one_line(capsys, ["eval", tmp_path / "m.onnx", "--data", write_data(tmp_path / "d")],
                    "is empty")


def test_truncated_torchscript(tmp_path, capsys):
    data = export_torchscript(tiny_model(), tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) * 2 // 3])
    expect_one_line(capsys, ["eval", tmp_path / "cut.pt", "--data", write_data(tmp_path / "d")],
                    "truncated")


def test_corrupt_safetensors(tmp_path, capsys):
    m = write_model(tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    expect_one_line(capsys, ["eval", m, "--data", write_data(tmp_path / "d")], "cannot read")


def test_json_not_a_model(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text(json.dumps({"hello": "world"}))
    expect_one_line(capsys, ["eval", tmp_path / "m", "--data", write_data(tmp_path / "d")],
                    "not a drmguard model")


def test_json_invalid(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text("{not json")
    expect_one_line(capsys, ["eval", tmp_path / "m", "--data", write_data(tmp_path / "d")],
                    "not valid JSON")


def test_model_json_without_weights(tmp_path, capsys):
    m = write_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    expect_one_line(capsys, ["eval", m, "--data", write_data(tmp_path / "d")],
                    "no model.safetensors")


def test_weights_of_another_architecture(tmp_path, capsys):
    m = write_model(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["arch_kwargs"] = {"widths": [8, 16]}
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    expect_one_line(capsys, ["eval", m, "--data", write_data(tmp_path / "d")], "does not match")


def test_torchscript_not_a_k_vector(tmp_path, capsys):
    f = tmp_path / "v.pt"
    scripted = torch.jit.script(Vec3().eval())
    torch.jit.save(scripted, str(f), _extra_files={
        "drmguard.json": json.dumps({"input_size": [16, 16], "in_channels": 3})})
    expect_one_line(capsys, ["eval", f, "--data", write_data(tmp_path / "d")], "B×K")


def test_torchscript_without_input_size(tmp_path, capsys):
    f = tmp_path / "s.pt"
    torch.jit.script(build_model("small_resnet", 2, widths=[4, 8]).eval()).save(str(f))
    expect_one_line(capsys, ["eval", f, "--data", write_data(tmp_path / "d")], "--input-size")


def test_onnx_wrong_output_width(tmp_path, capsys):
    pytest.importorskip("onnx2torch")
    from drmguard.models.io import export_onnx

    f = export_onnx(tiny_model(k=3), tmp_path / "m.onnx")
    expect_one_line(capsys, ["eval", f, "--data", write_data(tmp_path / "d", k=2)],
                    "the model outputs 3")


def test_corrupt_onnx(tmp_path, capsys):
    pytest.importorskip("onnx2torch")
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07" + b"\xff" * 50)
    expect_one_line(capsys, ["eval", tmp_path / "m.onnx", "--data", write_data(tmp_path / "d")],
                    "ONNX")


def test_weights_only_file_needs_arch(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file(tiny_model().net.state_dict(), str(tmp_path / "w.safetensors"))
    expect_one_line(capsys, ["eval", tmp_path / "w.safetensors", "--data",
                             write_data(tmp_path / "d")], "--arch")


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_refused_and_not_run(tmp_path, capsys, how):
    marker = tmp_path / "pwned"
    f = write_payload(tmp_path / "model.pt", marker, how)
    expect_one_line(capsys, ["eval", f, "--data", write_data(tmp_path / "d")], "--allow-pickle")
    assert not marker.exists()


# --- data -------------------------------------------------------------------------------------
def test_missing_data_folder(tmp_path, capsys):
    expect_one_line(capsys, ["eval", write_model(tmp_path / "m"), "--data", tmp_path / "nope"],
                    "does not exist")


def test_targets_of_wrong_width(tmp_path, capsys):
    expect_one_line(capsys, ["eval", write_model(tmp_path / "m", k=2), "--data",
                             write_data(tmp_path / "d", k=3)], "3 target(s)")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nonfinite_labels(tmp_path, capsys, value):
    d = csv_folder(tmp_path / "d", f"file,a,b\nimages/0.png,1.0,{value}\nimages/1.png,0,0\n",
                   ["0.png", "1.png"])
    expect_one_line(capsys, ["train", "--data", d, "--out", tmp_path / "m", "--profile", "tiny"],
                    "NaN or inf")


def test_non_numeric_label(tmp_path, capsys):
    d = csv_folder(tmp_path / "d", "file,a\nimages/0.png,left\n", ["0.png"])
    expect_one_line(capsys, ["data", "convert", d, "--out", tmp_path / "o"], "non-numeric")


def test_csv_without_header(tmp_path, capsys):
    d = csv_folder(tmp_path / "d", "images/0.png,1.0,2.0\n", ["0.png"])
    expect_one_line(capsys, ["data", "convert", d, "--out", tmp_path / "o"], "header")


def test_empty_benign_set(tmp_path, capsys):
    d = csv_folder(tmp_path / "d", "file,a,b\n")
    expect_one_line(capsys, ["eval", write_model(tmp_path / "m"), "--data", d], "no images")


def test_missing_image_file(tmp_path, capsys):
    d = csv_folder(tmp_path / "d", "file,a,b\nimages/0.png,1,2\nimages/gone.png,1,2\n",
                   ["0.png"])
    expect_one_line(capsys, ["data", "convert", d, "--out", tmp_path / "o"], "is missing")


def test_corrupt_image_file(tmp_path, capsys):
    d = csv_folder(tmp_path / "d", "file,a,b\nimages/0.png,1,2\n")
    (tmp_path / "d" / "images" / "0.png").write_bytes(b"not a png")
    expect_one_line(capsys, ["data", "convert", d, "--out", tmp_path / "o"], "cannot read image")


def test_short_csv_row(tmp_path, capsys):
    d = csv_folder(tmp_path / "d", "file,a,b\nimages/0.png,1\n", ["0.png"])
    expect_one_line(capsys, ["data", "convert", d, "--out", tmp_path / "o"], "expected 3 fields")


def test_npz_without_targets(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    expect_one_line(capsys, ["data", "convert", tmp_path / "d.npz", "--out", tmp_path / "o"],
                    "no 'targets'")


def test_image_size_not_divisible_by_8(tmp_path, capsys):
    expect_one_line(capsys, ["train", "--data", write_data(tmp_path / "d", size=20), "--out",
                             tmp_path / "m", "--profile", "tiny"], "divisible by 8")


# --- options ----------------------------------------------------------------------------------
def test_unknown_task(tmp_path, capsys):
    expect_one_line(capsys, ["train", "--data", write_data(tmp_path / "d"), "--out",
                             tmp_path / "m", "--profile", "tiny", "--task", "pose"],
                    "unknown task")


def test_unknown_arch(tmp_path, capsys):
    expect_one_line(capsys, ["train", "--data", write_data(tmp_path / "d"), "--out",
                             tmp_path / "m", "--profile", "tiny", "--arch", "vgg99"],
                    "unknown architecture")


def test_unknown_profile(tmp_path, capsys):
    expect_one_line(capsys, ["train", "--data", write_data(tmp_path / "d"), "--out",
                             tmp_path / "m", "--profile", "huge"], "unknown profile")


def test_existing_output_not_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    expect_one_line(capsys, ["data", "convert", write_data(tmp_path / "d"), "--out", out],
                    "already exists")
    assert (out / "keep.txt").read_text() == "mine"


# --- scan / mitigate (skipped until the commands exist) ---------------------------------------
@pytest.mark.parametrize("extra,needle", [
    pytest.param(["--tau", "-1"], "tau", marks=needs("scan", "--tau")),
    pytest.param(["--tau", "0"], "tau", marks=needs("scan", "--tau")),
    pytest.param(["--lambda1", "-5"], "lambda1", marks=needs("scan", "--lambda1")),
    pytest.param(["--task", "pose"], "unknown task", marks=needs("scan", "--task")),
    pytest.param(["--profile", "huge"], "unknown profile", marks=needs("scan", "--profile")),
    pytest.param(["--columns", "nope"], "no column", marks=needs("scan", "--columns")),
    pytest.param(["--error", "rmse"], "--error", marks=needs("scan", "--error")),
    pytest.param(["--input-size", "0,5"], "input size", marks=needs("scan", "--input-size")),
    pytest.param(["--mean", "a,b"], "--mean", marks=needs("scan", "--mean")),
    pytest.param(["--feature-layer", "nope"], "no layer 'nope'",
                 marks=needs("scan", "--feature-layer")),
])
def test_scan_bad_options(tmp_path, capsys, extra, needle):
    args = ["scan", write_model(tmp_path / "m"), "--data", write_data(tmp_path / "d", n=30),
            "--profile", "tiny", "-q", *extra]
    expect_one_line(capsys, args, needle)


# these two need scan to load its data with cli.model_opts.load_data_for_model (--columns)
@needs("scan", "--columns")
def test_scan_too_few_benign_images(tmp_path, capsys):
    expect_one_line(capsys, ["scan", write_model(tmp_path / "m"), "--data",
                             write_data(tmp_path / "d", n=3), "--profile", "tiny", "-q"],
                    "at least")


@needs("scan", "--columns")
def test_scan_wrong_channel_count(tmp_path, capsys):
    expect_one_line(capsys, ["scan", write_model(tmp_path / "m", channels=1), "--data",
                             write_data(tmp_path / "d", n=30, channels=3), "--profile", "tiny",
                             "-q"], "channel")


@needs("scan", "--report")
def test_scan_report_dir_not_overwritten(tmp_path, capsys):
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "keep.txt").write_text("mine")
    expect_one_line(capsys, ["scan", write_model(tmp_path / "m"), "--data",
                             write_data(tmp_path / "d", n=30), "--profile", "tiny", "-q",
                             "--report", rep], "already exists")


@needs("mitigate", "--out")
def test_mitigate_output_not_overwritten(tmp_path, capsys):
    m = write_model(tmp_path / "m")
    expect_one_line(capsys, ["mitigate", m, "--data", write_data(tmp_path / "d", n=30),
                             "--profile", "tiny", "-q", "--out", m], "already")


# --- the shared model/data options (cli/model_opts.py) through a throwaway command ------------
@pytest.fixture
def probe(monkeypatch):
    """Registers `drmguard probe MODEL --data ...` built from the shared options only, the way
    scan/mitigate/eval use them, and returns its argv prefix."""
    import typer

    from drmguard.cli import model_opts as mo

    def probe_cmd(model: str = mo.ModelArg, data: str = mo.DataOpt, task: str = mo.TaskOpt,
                  error: str = mo.ErrorOpt, columns: str = mo.ColumnsOpt,
                  arch: str = mo.ArchOpt, weights: str = mo.WeightsOpt,
                  input_size: str = mo.InputSizeOpt, mean: str = mo.MeanOpt,
                  std: str = mo.StdOpt, feature_layer: str = mo.FeatureLayerOpt,
                  allow_pickle: bool = mo.AllowPickleOpt):
        net, meta = mo.load_model_from_cli(model, allow_pickle, arch, weights, input_size, mean,
                                           std, feature_layer, task)
        ds, t = mo.load_data_for_model(data, net, task, error, columns, meta=meta, quiet=True,
                                       min_samples=10)
        typer.echo(json.dumps({"n": len(ds), "task": t.name, "names": ds.target_names,
                               "size": list(ds.image_size)}))

    info = typer.models.CommandInfo(name="probe", callback=probe_cmd)
    monkeypatch.setattr(app, "registered_commands", [*app.registered_commands, info])
    return ["probe"]


def test_probe_accepts_good_input(tmp_path, capsys, probe):
    d = write_data(tmp_path / "d", n=12, k=3, size=24, names=["pitch", "junk", "yaw"])
    code = main([*probe, write_model(tmp_path / "m"), "--data", d, "--columns", "yaw,pitch",
                 "--error", "angular"])
    out = capsys.readouterr()
    assert code == 0, out.err
    res = json.loads(out.out)
    assert res == {"n": 12, "task": "gaze", "names": ["yaw", "pitch"], "size": [16, 16]}


@pytest.mark.parametrize("extra,kw,needle", [
    ([], dict(n=12, channels=1), "1 channel(s) (grayscale) but the model takes 3"),
    ([], dict(n=5), "at least 10"),
    ([], dict(n=12, k=3), "choose them with --columns"),
    (["--columns", "t0,nope"], dict(n=12), "no column(s) nope"),
    (["--columns", "t0,t0"], dict(n=12), "twice"),
    (["--error", "rmse"], dict(n=12), "unknown --error"),
    (["--error", "mae", "--task", "gaze"], dict(n=12), "angular error"),
    (["--task", "headpose"], dict(n=12), "outputs 2 values but task headpose has 3"),
    (["--task", "age"], dict(n=12), "unknown task"),
    (["--input-size", "8,8"], dict(n=12), "drop --input-size"),
    (["--mean", "a,b"], dict(n=12), "--mean must be comma-separated numbers"),
    (["--feature-layer", "nope"], dict(n=12), "no layer 'nope'"),
    (["--weights", "w.safetensors"], dict(n=12), "weights file w.safetensors does not exist"),
])
def test_probe_bad_input(tmp_path, capsys, probe, extra, kw, needle):
    args = [*probe, write_model(tmp_path / "m"), "--data", write_data(tmp_path / "d", **kw),
            *extra]
    expect_one_line(capsys, args, needle)


# --- experiments in parallel (--workers, --executor, --address) -------------------------------
@pytest.mark.parametrize("extra,needle", [
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--workers", "-2"], "--workers must be at least 1, got -2"),
    (["--executor", "slurm"], "unknown executor 'slurm' (choose local, ray)"),
    (["--address", "127.0.0.1:6379"], "--address is for --executor ray"),
    (["--executor", "ray", "--address", "127.0.0.1:1"],
     "cannot reach the ray cluster at '127.0.0.1:1'"),
    (["--executor", "ray", "--address", "auto"], "cannot connect to the ray cluster at 'auto'"),
])
def test_experiment_parallel_options(tmp_path, capsys, monkeypatch, extra, needle):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    expect_one_line(capsys, ["experiment", "identification", "--profile", "tiny", "--benign", 1,
                             "--backdoored", 1, "--attacks", "badnets", "--cache", tmp_path / "c",
                             "--out", tmp_path / "o", "--quiet", *extra], needle)
    assert not (tmp_path / "c" / "models").exists()  # refused before any training


def test_experiment_ray_not_installed(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    expect_one_line(capsys, ["experiment", "attacks", "--profile", "tiny", "--executor", "ray"],
                    "--executor ray needs Ray: pip install 'drmguard[ray]'")


@pytest.mark.parametrize("extra,needle", [
    (["--seeds", "1,x"], "--seeds takes comma-separated integers, not '1,x'"),
    (["--seeds", "-1"], "--seeds values must be ≥ 0, not '-1'"),
    (["--threads", "0"], "--threads values must be ≥ 1, not '0'"),
    (["--threads", ","], "--threads is empty"),
])
def test_experiment_stability_bad_options(tmp_path, capsys, extra, needle):
    expect_one_line(capsys, ["experiment", "stability", "--profile", "tiny", "--benign", 1,
                             "--backdoored", 1, "--attacks", "badnets", "--cache", tmp_path / "c",
                             "--out", tmp_path / "o", "--quiet", *extra], needle)
    assert not (tmp_path / "c" / "models").exists()  # refused before any training
