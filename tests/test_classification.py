"""The classification task (issue 20, the paper's Appendix A.9): digits data, class labels on
disk, attack metrics (accuracy, ASR), DRMGuard on softmax outputs, Neural Cleanse in its
original per-class form, and the command line — all on the tiny profile."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from drmguard.cli import main
from drmguard.data import ArrayDataset, load_dataset, save_folder
from drmguard.data.formats import load_npz, save_npz
from drmguard.errors import DrmguardError
from drmguard.tasks import get_task, labels_to_onehot


# --- task -----------------------------------------------------------------------------------
def test_classification_task_loss_error_and_softmax():
    t = get_task("classification", 3)
    assert t.is_classification and t.dim == 3 and t.target_names == ("0", "1", "2")
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    onehot = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert t.error(logits, onehot).tolist() == [0.0, 1.0]
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0]))
    assert torch.isclose(t.loss(logits, onehot), ce)
    assert torch.allclose(t.output_transform(logits).sum(1), torch.ones(2))
    g = get_task("gaze")
    assert not g.is_classification and g.output_transform(logits) is logits
    with pytest.raises(DrmguardError, match="number of classes"):
        get_task("classification")


def test_labels_to_onehot_rejects_out_of_range_and_non_integer_labels():
    assert labels_to_onehot([0, 2, 1], 3).argmax(1).tolist() == [0, 2, 1]
    with pytest.raises(DrmguardError, match=r"label 10 of row 1 is not a class index in 0\.\.9"):
        labels_to_onehot([3, 10], 10)
    with pytest.raises(DrmguardError, match="label -1"):
        labels_to_onehot([-1], 10)
    with pytest.raises(DrmguardError, match="label 1.5"):
        labels_to_onehot([1.5], 10)


# --- data -----------------------------------------------------------------------------------
def test_digits_source_is_real_resized_one_hot_data():
    ds = load_dataset("digits", size=16)
    assert len(ds) == 1797 and ds.images.shape == (1797, 16, 16, 3)
    assert ds.task == "classification" and ds.target_dim == 10
    counts = np.bincount(ds.targets.argmax(1), minlength=10)
    assert counts.min() >= 170  # the ten classes, roughly balanced
    assert (ds.targets.sum(1) == 1).all()
    assert ds.images.max() == 255 and ds.images.min() == 0
    grey = load_dataset("digits:?channels=1&size=8")
    assert grey.images.shape == (1797, 8, 8, 1)


def test_class_labels_round_trip_through_folder_and_npz(tmp_path):
    ds = load_dataset("digits:?size=8&limit=30")
    save_folder(ds, tmp_path / "f", progress=False)
    header = (tmp_path / "f" / "labels.csv").read_text().splitlines()[:2]
    assert header[0] == "file,label" and header[1].endswith(",0")
    assert json.loads((tmp_path / "f" / "meta.json").read_text())["classes"] == \
        [str(i) for i in range(10)]
    back = load_dataset(str(tmp_path / "f"))
    assert back.task == "classification" and np.array_equal(back.targets, ds.targets)
    save_npz(ds, tmp_path / "d.npz")
    with np.load(tmp_path / "d.npz") as z:
        assert z["targets"].shape == (30,)  # class indices on disk
    assert np.array_equal(load_npz(tmp_path / "d.npz").targets, ds.targets)


def test_out_of_range_label_in_labels_csv_is_an_error(tmp_path):
    ds = load_dataset("digits:?size=8&limit=6")
    save_folder(ds, tmp_path / "f", progress=False)
    csv = tmp_path / "f" / "labels.csv"
    csv.write_text(csv.read_text().replace("images/00002.png,2", "images/00002.png,12"))
    with pytest.raises(DrmguardError, match=r"labels.csv: label 12 of row 2"):
        load_dataset(str(tmp_path / "f"))


# --- zoo, attacks and metrics ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_zoo():
    """A benign and a BadNets digits classifier on the tiny profile (seconds)."""
    from drmguard.attacks import attack_train_config, make_attack
    from drmguard.attacks.base import draw_target
    from drmguard.experiments.data import experiment_task, synthetic_splits
    from drmguard.profiles import get_profile
    from drmguard.training import train_regressor

    torch.set_num_threads(1)
    sp = synthetic_splits("classification", "tiny", 0)
    t = experiment_task("classification")
    p = get_profile("tiny")
    cfg = p.train_config("classification", 0)
    benign, _ = train_regressor(sp.train, t, p.arch, cfg, p.arch_kwargs, progress=False)
    target = draw_target(sp.train.targets, 0)[0]
    attack = make_attack("badnets", target, task="classification",
                         image_size=sp.train.image_size, channels=3, seed=0, profile="tiny",
                         rate=0.3)
    bd, _ = attack.train_backdoored(sp.train, t, p.arch,
                                    attack_train_config("badnets", "tiny", "classification"),
                                    p.arch_kwargs, progress=False)
    return sp, t, benign, bd, attack


def test_split_and_target_are_classes(tiny_zoo):
    sp, t, _, _, attack = tiny_zoo
    assert sp.train.image_size == (16, 16) and sp.train.target_dim == 10
    assert (attack.target.numpy() == np.eye(10)[int(attack.target.argmax())]).all()


@pytest.mark.parametrize("name", ["badnets", "blend", "wanet"])
def test_attacks_poison_with_the_target_class(tiny_zoo, name):
    from drmguard.attacks import make_attack

    sp, t, _, _, _ = tiny_zoo
    a = make_attack(name, np.eye(10)[7], task="classification", image_size=(16, 16),
                    channels=3, seed=0, profile="tiny")
    if name == "wanet":  # trains by batch: the poisoned batch carries the target class
        x, y = sp.train.tensors(range(20))
        _, y2, n, _ = a.batch_poison(x, y, torch.Generator().manual_seed(0))
        assert (y2[:n].argmax(1) == 7).all() and torch.equal(y2[n:], y[n:])
    else:
        poisoned, info = a.poison_dataset(sp.train)
        changed = (poisoned.targets != sp.train.targets).any(1)
        assert info["poisoned"] > 0 and (poisoned.targets[changed].argmax(1) == 7).all()


def test_attack_metrics_give_accuracy_and_asr(tiny_zoo):
    from drmguard.metrics import IMPLANT_ASR, attack_metrics, implanted

    sp, t, benign, bd, attack = tiny_zoo
    m = attack_metrics(bd, attack, sp.test, t)
    assert m["target_class"] == int(attack.target.argmax())
    assert 0 <= m["ASR"] <= 1 and abs(m["accuracy"] - (1 - m["RE"])) < 1e-9
    # ASR counts only images whose true class is not the target
    x, y = sp.test.tensors()
    keep = y.argmax(1) != m["target_class"]
    pred = bd(attack.apply(x[keep])).argmax(1)
    assert m["ASR"] == pytest.approx(float((pred == m["target_class"]).float().mean()))
    assert implanted({"ASR": IMPLANT_ASR}) and not implanted({"ASR": IMPLANT_ASR - 0.01})


# --- defences ---------------------------------------------------------------------------------
def test_drmguard_scans_a_classifier_on_its_softmax(tiny_zoo, monkeypatch):
    from drmguard.defenses import get_detector
    from drmguard.defenses.drmguard import reverse
    from drmguard.defenses.drmguard.outputs import ProbabilityView

    sp, t, benign, _, _ = tiny_zoo
    seen = []
    real = reverse.precompute_benign
    import importlib

    scan_module = importlib.import_module("drmguard.defenses.drmguard.scan")
    monkeypatch.setattr(scan_module, "precompute_benign",
                        lambda model, *a: seen.append(model) or real(model, *a))
    d = get_detector("drmguard", "tiny", "classification")
    assert d.config_for(t).lambda3 == 0.0  # the paper drops the FSRT for classifiers
    det = d.detect(benign, sp.benign, t, progress=False)
    assert isinstance(seen[0], ProbabilityView)
    est = np.array(det.target_estimate)
    assert est.shape == (10,) and abs(est.sum() - 1) < 1e-4  # a mean of softmax vectors
    assert det.details["target_class"] == int(est.argmax())


def test_mtr_attention_of_a_classifier_is_not_zero(tiny_zoo):
    from drmguard.defenses.drmguard.mtr import input_attention
    from drmguard.defenses.drmguard.outputs import ProbabilityView

    sp, _, benign, _, _ = tiny_zoo
    x = sp.benign.tensors(range(4))[0]
    a = input_attention(ProbabilityView(benign), x)
    assert a.shape == (4, 16, 16) and float(a.min(dim=1).values.max()) >= 0
    assert (a.flatten(1).max(1).values > 0).all()  # Σ softmax is constant: not its gradient


def test_neural_cleanse_original_enumerates_the_classes(tiny_zoo):
    from drmguard.defenses import get_detector

    sp, t, _, bd, attack = tiny_zoo
    d = get_detector("neural_cleanse", "tiny", "classification")
    assert d.config_for(t).variant == "classes"
    det = d.detect(bd, sp.benign, t, progress=False)
    norms = np.array(det.details["mask_l1"])
    assert norms.shape == (10,)
    med = np.median(norms)
    mad = 1.4826 * np.median(np.abs(norms - med))
    assert det.details["anomaly_index"] == pytest.approx(abs(norms.min() - med) / mad)
    assert det.backdoored == (det.details["anomaly_index"] > 2 and norms.min() < med)
    assert det.details["target_class"] == int(norms.argmin())
    with pytest.raises(DrmguardError, match="variant 'classes'"):
        get_detector("nc", "tiny", "classification", variant="optimise").detect(
            bd, sp.benign, t, progress=False)


def test_regression_detectors_refuse_the_classes_variant():
    from drmguard.defenses import get_detector

    assert get_detector("nc", "cpu", "gaze").config.variant == "optimise"
    d = get_detector("nc", "tiny", "generic", variant="classes", class_epochs=1)
    g = np.random.default_rng(0)
    ds = ArrayDataset(g.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
                      g.normal(size=(8, 2)).astype(np.float32))
    from drmguard.models import RegressionModel, build_model

    model = RegressionModel(build_model("small_resnet", 2, widths=[4, 8]), (16, 16)).eval()
    with pytest.raises(DrmguardError, match="variant 'classes'"):
        d.detect(model, ds, get_task("generic", 2), progress=False)


# --- command line ---------------------------------------------------------------------------
def _one_line(capsys, args, needle):
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("drmguard: error:"), err
    assert needle.lower() in err[0].lower(), err[0]


@pytest.fixture(scope="module")
def cli_files(tiny_zoo, tmp_path_factory):
    from drmguard.models.io import model_meta, save_model

    sp, t, benign, bd, _ = tiny_zoo
    root = tmp_path_factory.mktemp("cls")
    meta = model_meta(bd, "small_resnet", t, {"widths": [8, 16, 32]})
    save_model(bd, root / "classifier", meta)
    save_folder(sp.benign, root / "benign", progress=False)
    from drmguard.models import RegressionModel, build_model

    torch.manual_seed(0)
    reg = RegressionModel(build_model("small_resnet", 2, widths=[4, 8]), (16, 16)).eval()
    save_model(reg, root / "gaze_model", model_meta(reg, "small_resnet", get_task("gaze"),
                                                    {"widths": [4, 8]}))
    return root


def test_cli_data_digits_writes_class_labels(tmp_path, capsys):
    assert main(["data", "digits", "--size", "8", "--out", str(tmp_path / "d"),
                 "--split", "0.7,0.1,0.2", "--quiet"]) == 0
    assert (tmp_path / "d" / "benign" / "labels.csv").read_text().startswith("file,label\n")
    ds = load_dataset(str(tmp_path / "d" / "test"))
    assert ds.task == "classification" and len(ds) == 359


def test_cli_scans_a_classifier_with_both_detectors(cli_files, capsys):
    out = cli_files / "scan.json"
    assert main(["scan", str(cli_files / "classifier"), "--data", str(cli_files / "benign"),
                 "--profile", "tiny", "--quiet", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["task"] == "classification" and 0 <= rec["target_class"] < 10
    out2 = cli_files / "nc.json"
    assert main(["scan", str(cli_files / "classifier"), "--data", str(cli_files / "benign"),
                 "--profile", "tiny", "--quiet", "--defense", "neural_cleanse",
                 "--json", str(out2)]) == 0
    rec2 = json.loads(out2.read_text())
    assert rec2["defense"] == "nc" and len(rec2["details"]["mask_l1"]) == 10


def test_cli_regression_model_passed_as_a_classifier(cli_files, capsys):
    _one_line(capsys, ["scan", cli_files / "gaze_model", "--data", cli_files / "benign",
                       "--profile", "tiny", "--task", "classification"],
              "regression model (task gaze), not a classifier")
    _one_line(capsys, ["scan", cli_files / "gaze_model", "--data", cli_files / "benign",
                       "--profile", "tiny"], "the model is a regression model (task gaze), not a classifier: class labels")


def test_cli_classifier_with_out_of_range_labels(cli_files, capsys, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(cli_files / "benign", bad)
    csv = bad / "labels.csv"
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",10"
    csv.write_text("\n".join(lines) + "\n")
    _one_line(capsys, ["scan", cli_files / "classifier", "--data", bad, "--profile", "tiny"],
              "label 10 of row 2 is not a class index in 0..9")


def test_cli_experiment_refuses_classification_where_unsupported(capsys):
    _one_line(capsys, ["experiment", "mitigation", "--task", "classification"],
              "not 'classification'")


@pytest.mark.parametrize("profile", ["tiny", "cpu", "paper"])
@pytest.mark.parametrize("kind,name", [("detector", "drmguard"), ("detector", "nc"),
                                       ("detector", "featurere"), ("mitigator", "ft"),
                                       ("mitigator", "fp"), ("mitigator", "anp")])
def test_every_defence_resolves_for_classification_and_regression_ones_refuse(kind, name,
                                                                              profile, tiny_zoo):
    from drmguard.defenses import get_detector, get_mitigator
    from drmguard.defenses.base import resolved_config

    sp, t, benign, _, _ = tiny_zoo
    d = (get_detector if kind == "detector" else get_mitigator)(name, profile, "classification")
    json.dumps(resolved_config(d, t))
    if not d.supports_classification:
        with pytest.raises(DrmguardError, match="regression only"):
            d.check_inputs(benign, sp.benign, t)


def test_class_indices_without_meta_need_task_classification(cli_files, tmp_path, capsys):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(cli_files / "benign", plain)
    (plain / "meta.json").unlink()  # a bare labels.csv of class indices
    from drmguard.api import prepare

    _, _, ds, t = prepare(str(cli_files / "classifier"), str(plain), "classification",
                          progress=False)
    assert t.is_classification and ds.target_dim == 10 and (ds.targets.sum(1) == 1).all()
    _one_line(capsys, ["scan", cli_files / "classifier", "--data", plain, "--profile", "tiny"],
              "the model is a classifier (task classification), not a regression model")
