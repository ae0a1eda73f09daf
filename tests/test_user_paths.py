"""What a new user trips on (issue 19): several models in one scan, a model file without its
input size, the demo's reports, the report's honest status, one cache default."""

import json

import pytest

from drmguard.cli import main
from drmguard.report import write_report
from _files import write_gaze_folder, write_model_dir, write_plain_torchscript


@pytest.fixture
def folder(tmp_path):
    """Two drmguard models and one plain TorchScript file (no recorded input size) in one
    folder, plus 16×16 labelled images."""
    models = tmp_path / "models"
    models.mkdir()
    for i in (0, 1):
        write_model_dir(models / f"m{i}", i)
    write_plain_torchscript(models / "plain.pt", 2)
    (models / "README.txt").write_text("not a model")
    write_gaze_folder(tmp_path / "d")
    return tmp_path


def _scan(args, capsys):
    code = main(["scan", *args, "--profile", "tiny", "-q"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plain_torchscript_takes_its_input_size_from_the_data(folder, capsys):
    code, out, err = _scan([str(folder / "models" / "plain.pt"), "--data", str(folder / "d"),
                            "--json", "-"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["model"].endswith("plain.pt") and r["status"] in (
        "backdoored", "benign", "no cheap trigger found")
    # the note says where the size came from (not with -q, so run once more without it)
    code = main(["scan", str(folder / "models" / "plain.pt"), "--data", str(folder / "d"),
                 "--profile", "tiny", "--json", str(folder / "s.json")])
    err = capsys.readouterr().err
    assert code == 0 and "using the data's 16×16" in err


def test_images_of_different_sizes_are_a_clear_error(folder, capsys):
    from PIL import Image

    img = next((folder / "d" / "images").iterdir())
    Image.new("RGB", (20, 20)).save(img)
    code, out, err = _scan([str(folder / "models" / "plain.pt"), "--data", str(folder / "d")],
                           capsys)
    assert code == 2 and "different sizes" in err and len(err.strip().splitlines()) == 1


def test_scan_several_models_one_table_one_json_list(folder, capsys):
    m = folder / "models"
    code, out, err = _scan([str(m / "m0"), str(m / "m1"), "--data", str(folder / "d"),
                            "--task", "gaze", "--json", str(folder / "all.json"),
                            "--report", str(folder / "rep")], capsys)
    assert code == 0, err
    assert out.count("DRMGuard scan") == 1 and "m0" in out and "m1" in out
    records = json.loads((folder / "all.json").read_text())
    assert [r["model"] for r in records] == [str(m / "m0"), str(m / "m1")]
    assert all(r["schema"] == "drmguard.scan/1" for r in records)
    assert (folder / "rep" / "m0" / "index.html").exists()
    assert (folder / "rep" / "m1" / "index.html").exists()


def test_scan_a_folder_of_models(folder, capsys):
    code, out, err = _scan([str(folder / "models"), "--data", str(folder / "d"), "--task",
                            "gaze", "--json", "-"], capsys)
    assert code == 0, err
    records = json.loads(out)
    assert sorted(r["model"].rsplit("/", 1)[-1] for r in records) == ["m0", "m1", "plain.pt"]


def test_one_unreadable_model_among_several(folder, capsys):
    bad = folder / "models" / "junk.pt"
    bad.write_bytes(b"\x00" * 32)
    code, out, err = _scan([str(folder / "models" / "m0"), str(bad), "--data",
                            str(folder / "d"), "--task", "gaze", "--json",
                            str(folder / "r.json")], capsys)
    assert code == 2 and "1 of 2 models could not be scanned" in err
    records = json.loads((folder / "r.json").read_text())
    assert "status" in records[0] and "error" in records[1]
    assert "error" in out  # the summary table shows it


def test_save_trigger_takes_one_model(folder, capsys):
    m = folder / "models"
    code, out, err = _scan([str(m / "m0"), str(m / "m1"), "--data", str(folder / "d"),
                            "--save-trigger", str(folder / "t.safetensors")], capsys)
    assert code == 2 and "one model" in err


def test_report_shows_the_scans_own_status(tmp_path):
    """R ≈ 0 from a search that never collapsed the outputs: not a red marker under a green
    badge; the page says what happened."""
    r = {"backdoored": False, "status": "no cheap trigger found", "R": 0.0, "tau": 0.03,
         "score": -1.95, "collapse_ratio": 0.95, "collapse_threshold": 0.25}
    page = write_report(r, None, tmp_path / "a").read_text()
    assert "No backdoor found" in page and "never collapsed the outputs" in page
    assert "#c62828" not in page.split("<svg", 1)[1].split("</svg>")[0]  # no red marker
    assert "R (no collapse)" in page
    assert "no cheap trigger found" in page.split("<title>")[1].split("</title>")[0]
    # a flagged model keeps the red marker; the verdict is the record's, never recomputed
    flagged = write_report({**r, "backdoored": True, "status": "backdoored", "R": 0.05,
                            "collapse_ratio": 0.01}, None, tmp_path / "b").read_text()
    assert "BACKDOOR DETECTED" in flagged and 'fill="#c62828"' in flagged
    assert "No backdoor" not in flagged


def test_one_cache_default(monkeypatch, tmp_path):
    from drmguard.experiments.zoo import Zoo
    from drmguard.utils import default_cache_dir

    monkeypatch.setenv("DRMGUARD_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == str(tmp_path / "c") and Zoo().root == tmp_path / "c"
    monkeypatch.delenv("DRMGUARD_CACHE")
    assert default_cache_dir() == ".drmguard-cache"


def test_one_schema_constant():
    import importlib

    from drmguard import report, schema

    scan_mod = importlib.import_module("drmguard.defenses.drmguard.scan")

    assert report.SCHEMA is schema.SCAN_SCHEMA and scan_mod.SCHEMA is schema.SCAN_SCHEMA
