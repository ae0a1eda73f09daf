"""Model files in and out: TorchScript, ONNX, user architectures, pickles (models/io.py)."""

import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from drmguard.errors import DrmguardError
from drmguard.models import RegressionModel, build_model
from drmguard.models.io import (detect_format, export_onnx, export_torchscript, load_model,
                                model_meta, parse_input_size, save_model, save_model_any)
from drmguard.tasks import GAZE, HEADPOSE
from _payload import write_payload

X = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def small_model(k=2, channels=3, seed=0):
    torch.manual_seed(seed)
    net = build_model("small_resnet", k, channels, widths=[4, 8])
    return RegressionModel(net, (16, 16), channels, [0.5] * channels, [0.25] * channels).eval()


class TwoLinear(nn.Module):
    """Head not named fc, an earlier Linear of the same width, and a view after the head."""

    def __init__(self, k=2):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.early = nn.Linear(4, k)
        self.mid = nn.Linear(k, 6)
        self.out_layer = nn.Linear(6, k)

    def forward(self, x):
        z = torch.relu(self.mid(self.early(self.conv(x).mean((2, 3)))))
        return self.out_layer(z)


class TanhHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return torch.tanh(self.fc(self.conv(x).mean((2, 3))))


class Vector3D(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x.mean((2, 3))).unsqueeze(-1)  # B×2×1, not B×K


def check_split(model, x=X):
    h, y = model.forward_with_features(x)
    assert h.dim() == 2 and y.shape == (len(x), model.num_outputs)
    torch.testing.assert_close(model.head(h), y)
    torch.testing.assert_close(model(x), y)


# --- TorchScript ----------------------------------------------------------------------------
def test_torchscript_export_roundtrip_needs_no_options(tmp_path):
    model = small_model()
    f = export_torchscript(model, tmp_path / "m.pt", task=GAZE)
    assert detect_format(f) == "torchscript"
    back, meta = load_model(f)
    torch.testing.assert_close(back(X), model(X))
    check_split(back)
    # the exported file takes [0,1] images: its own normalisation is the identity
    assert meta["mean"] == [0.0] * 3 and meta["std"] == [1.0] * 3
    assert meta["input_size"] == [16, 16] and meta["in_channels"] == 3
    assert meta["task"]["name"] == "gaze" and meta["source_format"] == "torchscript"
    # W, b of the head are the original model's
    torch.testing.assert_close(back.head.weight, model.head.weight)


def test_torchscript_finetunes_like_a_module(tmp_path):
    back, _ = load_model(export_torchscript(small_model(), tmp_path / "m.pt"))
    params = [p for p in back.parameters() if p.requires_grad]
    assert params and all(p.is_leaf for p in params)
    before = back(X).detach()
    opt = torch.optim.SGD(params, lr=0.1)
    loss = (back(X) - 1).abs().mean()
    loss.backward()
    opt.step()
    assert not torch.allclose(back(X), before)
    check_split(back)  # still F = W·F1 + b after the update


def test_torchscript_model_deepcopies_for_finetuning(tmp_path):
    """Mitigation fine-tunes ``copy.deepcopy(model)``: the copy must train, the original not."""
    import copy

    from drmguard.data import ArrayDataset
    from drmguard.training import TrainConfig, fit

    back, _ = load_model(export_torchscript(small_model(), tmp_path / "m.pt"))
    twin = copy.deepcopy(back)
    before = back(X).detach()
    torch.testing.assert_close(twin(X), before)
    g = torch.Generator().manual_seed(0)
    ds = ArrayDataset((torch.rand(16, 16, 16, 3, generator=g) * 255).byte().numpy(),
                      torch.randn(16, 2, generator=g).numpy())
    fit(twin, ds, GAZE, TrainConfig(epochs=1, batch_size=8, lr=1e-2, device="cpu"),
        progress=False)
    assert not torch.allclose(twin(X), before)
    torch.testing.assert_close(back(X), before)  # the original is untouched
    check_split(twin)


def test_scripted_foreign_model_needs_input_size(tmp_path):
    torch.manual_seed(0)
    net = TwoLinear().eval()
    f = tmp_path / "foreign.pt"
    torch.jit.script(net).save(str(f))
    with pytest.raises(DrmguardError, match="`input_size`"):
        load_model(f)
    back, meta = load_model(f, input_size="8,8")
    assert meta["scripted_head"] == "out_layer"  # not 'early', which also has 2 outputs
    assert meta["in_channels"] == 3  # probed
    assert any("[0, 1]" in n for n in meta["notes"])
    torch.testing.assert_close(back(X[:, :, :8, :8]), net(X[:, :, :8, :8]))
    check_split(back, X[:, :, :8, :8])
    # explicit normalisation is applied before the scripted model
    back2, _ = load_model(f, input_size=(8, 8), mean=[0.5], std=[0.25])
    torch.testing.assert_close(back2(X[:, :, :8, :8]), net((X[:, :, :8, :8] - 0.5) / 0.25))


def test_torchscript_head_not_linear_is_explained(tmp_path):
    f = tmp_path / "tanh.pt"
    torch.jit.script(TanhHead().eval()).save(str(f))
    with pytest.raises(DrmguardError, match="`feature_layer`"):
        load_model(f, input_size=8)
    with pytest.raises(DrmguardError, match="not W·h\\+b of linear layer 'fc'"):
        load_model(f, input_size=8, feature_layer="fc")
    with pytest.raises(DrmguardError, match="no linear layer 'head'.*fc"):
        load_model(f, input_size=8, feature_layer="head")


def test_torchscript_output_not_a_vector(tmp_path):
    f = tmp_path / "v.pt"
    torch.jit.script(Vector3D().eval()).save(str(f))
    with pytest.raises(DrmguardError, match="B×K tensor, got \\(4, 2, 1\\)"):
        load_model(f, input_size=8)


def test_task_checks_output_width(tmp_path):
    f = export_torchscript(small_model(k=3), tmp_path / "m.pt")
    with pytest.raises(DrmguardError, match="outputs 3 values but task gaze has 2"):
        load_model(f, task="gaze")
    _, meta = load_model(f, task=HEADPOSE)
    assert meta["task"]["name"] == "headpose"


# --- ONNX -------------------------------------------------------------------------------------
def test_onnx_export_roundtrip(tmp_path):
    pytest.importorskip("onnx2torch")
    model = small_model()
    f = export_onnx(model, tmp_path / "m.onnx", task=GAZE)
    assert detect_format(f) == "onnx"
    back, meta = load_model(f)
    assert isinstance(back.head, nn.Linear)  # the final Gemm became nn.Linear
    torch.testing.assert_close(back(X), model(X), atol=1e-5, rtol=1e-4)
    check_split(back)
    assert meta["input_size"] == [16, 16] and meta["mean"] == [0.0] * 3
    assert meta["task"]["name"] == "gaze"


def test_onnx_foreign_static_shape_is_read(tmp_path):
    pytest.importorskip("onnx2torch")
    torch.manual_seed(0)
    net = build_model("small_resnet", 2, 1, widths=[4, 8]).eval()
    f = tmp_path / "plain.onnx"
    torch.onnx.export(net, (torch.rand(1, 1, 24, 16),), str(f), dynamo=False, opset_version=17,
                      dynamic_axes={"x": {0: "b"}}, input_names=["x"])
    back, meta = load_model(f)
    assert meta["in_channels"] == 1 and meta["input_size"] == [24, 16]
    assert any("[0, 1]" in n for n in meta["notes"])
    x = torch.rand(3, 1, 24, 16)
    torch.testing.assert_close(back(x), net(x), atol=1e-5, rtol=1e-4)


def test_onnx_without_extra_gives_install_hint(tmp_path, monkeypatch):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"\x08\x07rest-of-a-protobuf")
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # import fails
    with pytest.raises(DrmguardError, match=r"drmguard\[onnx\]"):
        load_model(f)


# --- user architectures ---------------------------------------------------------------------
ARCH_CODE = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_outputs=2):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.regressor = nn.Linear(6, num_outputs)

        def forward(self, x):
            return self.regressor(torch.relu(self.conv(x)).mean((2, 3)))

    def build(num_outputs=2):
        return Net(num_outputs)
""")


@pytest.fixture
def user_arch(tmp_path, monkeypatch):
    (tmp_path / "my_gaze_arch.py").write_text(ARCH_CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop("my_gaze_arch", None)


def test_arch_factory_with_safetensors(user_arch):
    torch.manual_seed(0)
    sys.path.insert(0, str(user_arch))
    import my_gaze_arch

    net = my_gaze_arch.build(3).eval()
    save_file(net.state_dict(), str(user_arch / "w.safetensors"))
    model, meta = load_model("w.safetensors", arch="my_gaze_arch:build", input_size="3,16,16",
                             mean=[0.5] * 3, std=[0.25], num_outputs=3)
    assert model.head_name == "regressor" and meta["arch"] == "my_gaze_arch:build"
    x = X
    torch.testing.assert_close(model(x), net((x - 0.5) / 0.25))
    # the same weights as a plain torch.save state dict (read with weights_only)
    torch.save(net.state_dict(), user_arch / "w.pth")
    model2, _ = load_model(None, arch="my_gaze_arch:build", weights="w.pth", input_size=16,
                           num_outputs=3)
    torch.testing.assert_close(model2.head.weight, net.regressor.weight)
    # saved as a drmguard directory, it reloads only when the code is named again
    save_model_any(model, user_arch / "saved", meta)
    with pytest.raises(DrmguardError, match="`arch` my_gaze_arch:build"):
        load_model(user_arch / "saved")
    back, _ = load_model(user_arch / "saved", arch="my_gaze_arch:build")
    torch.testing.assert_close(back(x), model(x))


@pytest.mark.parametrize("arch,needle", [
    ("no_such_module_xyz:build", "cannot import module"),
    ("my_gaze_arch:missing", "has no 'missing'"),
    ("nonsense", "unknown architecture"),
])
def test_arch_errors(user_arch, arch, needle):
    save_file({"a": torch.zeros(1)}, str(user_arch / "w.safetensors"))
    with pytest.raises(DrmguardError, match=needle):
        load_model("w.safetensors", arch=arch, input_size=16)


def test_arch_weights_mismatch(user_arch):
    save_file({"conv.weight": torch.zeros(1)}, str(user_arch / "w.safetensors"))
    with pytest.raises(DrmguardError, match="does not match `arch`"):
        load_model("w.safetensors", arch="my_gaze_arch:build", input_size=16)


def test_registry_arch_with_weights(tmp_path):
    model = small_model()
    save_file({k[4:]: v for k, v in model.state_dict().items() if k.startswith("net.")},
              str(tmp_path / "w.safetensors"))
    with pytest.raises(DrmguardError, match="does not match"):  # widths differ from default
        load_model(tmp_path / "w.safetensors", arch="small_resnet", input_size=16)
    net = build_model("resnet18", 2).eval()
    save_file(net.state_dict(), str(tmp_path / "r.safetensors"))
    back, meta = load_model(tmp_path / "r.safetensors", arch="resnet18", input_size=32)
    assert back.num_outputs == 2 and back.head_name == "fc"  # K read from fc.weight


def test_safetensors_alone_asks_for_arch(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(DrmguardError, match="`arch`"):
        load_model(tmp_path / "w.safetensors")


# --- drmguard directories ----------------------------------------------------------------------
def test_drmguard_dir_feature_layer_and_option_conflicts(tmp_path):
    model = small_model()
    save_model(model, tmp_path / "m", model_meta(model, "small_resnet", GAZE, {"widths": [4, 8]}))
    back, meta = load_model(tmp_path / "m", feature_layer="fc")
    assert back.head_name == "fc"
    with pytest.raises(DrmguardError, match="drop `mean`"):
        load_model(tmp_path / "m", mean=[0.1, 0.1, 0.1])
    with pytest.raises(DrmguardError, match="no layer 'nope'"):
        load_model(tmp_path / "m", feature_layer="nope")


def test_feature_layer_override_on_module(tmp_path):
    net = TanhHead().eval()
    torch.save(net, tmp_path / "tanh.pt")
    with pytest.raises(DrmguardError, match="`feature_layer` NAME.*linear layers: fc"):
        load_model(tmp_path / "tanh.pt", allow_pickle=True, input_size=8)
    model, meta = load_model(tmp_path / "tanh.pt", allow_pickle=True, input_size=8,
                             feature_layer="fc")
    assert model.head_name == "fc"
    assert any("more than that linear layer" in n for n in meta["notes"])


# --- pickles ------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_payload_executes_nothing(tmp_path, how):
    marker = tmp_path / "pwned"
    f = write_payload(tmp_path / "model.pt", marker, how)
    assert detect_format(f) == "pickle"
    with pytest.raises(DrmguardError, match="allow-pickle"):
        load_model(f)
    # as a weights file for --arch it is read with weights_only: refused, not run
    with pytest.raises(DrmguardError, match="not a plain state dict"):
        load_model(f, arch="small_resnet", input_size=16)
    assert not marker.exists()


def test_pickled_module_loads_when_allowed(tmp_path):
    net = TwoLinear().eval()
    torch.save(net, tmp_path / "m.pt")
    model, meta = load_model(tmp_path / "m.pt", allow_pickle=True, input_size=8)
    assert model.head_name == "out_layer" and meta["source_format"] == "pickle"
    save_model_any(model, tmp_path / "out", meta)  # saved as TorchScript, no pickle
    back, meta2 = load_model(tmp_path / "out")
    assert meta2["arch"] == "torchscript"
    torch.testing.assert_close(back(X[:, :, :8, :8]), model(X[:, :, :8, :8]))


# --- misc -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,expected", [
    ("224", (None, 224, 224)), ("36,60", (None, 36, 60)), ("1,36,60", (1, 36, 60)),
    ("36x60", (None, 36, 60)), ((3, 8, 8), (3, 8, 8)), (None, None)])
def test_parse_input_size(value, expected):
    assert parse_input_size(value) == expected


@pytest.mark.parametrize("bad", ["a,b", "0,5", "1,2,3,4"])
def test_parse_input_size_errors(bad):
    with pytest.raises(DrmguardError):
        parse_input_size(bad)


def test_corrupt_and_unknown_files(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DrmguardError, match="empty"):
        load_model(tmp_path / "empty.pt")
    (tmp_path / "junk.bin").write_bytes(b"this is not a model at all")
    with pytest.raises(DrmguardError, match="cannot recognise"):
        load_model(tmp_path / "junk.bin")
    f = export_torchscript(small_model(), tmp_path / "m.pt")
    data = f.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DrmguardError, match="cannot recognise.*truncated"):
        load_model(tmp_path / "cut.pt")


def test_cli_export_round_trips_and_never_overwrites(tmp_path, capsys):
    from drmguard.cli import main

    model = small_model()
    save_model(model, tmp_path / "m", model_meta(model, "small_resnet", GAZE, {"widths": [4, 8]}))
    x = torch.rand(3, 3, 16, 16)
    for fmt, name in (("torchscript", "m.pt"), ("onnx", "m.onnx")):
        out = tmp_path / name
        assert main(["export", str(tmp_path / "m"), "--format", fmt, "--out", str(out),
                     "-q"]) == 0
        loaded, meta = load_model(out)
        assert loaded.num_outputs == 2 and tuple(loaded.input_size) == (16, 16)
        assert torch.allclose(loaded(x), model(x), atol=1e-4)
        before = out.read_bytes()
        assert main(["export", str(tmp_path / "m"), "--format", fmt, "--out", str(out)]) == 2
        assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["export", str(tmp_path / "m"), "--format", "tflite", "--out",
                 str(tmp_path / "x")]) == 2
