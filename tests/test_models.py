
import pytest
import torch
from torch import nn

from drmguard.errors import DrmguardError
from drmguard.models import RegressionModel, build_model
from drmguard.models.io import load_model, model_meta, save_model
from drmguard.tasks import GAZE
from _payload import write_payload


@pytest.mark.parametrize("arch,size", [("small_resnet", 16), ("resnet18", 32),
                                       ("resnet34", 32), ("mobilenet_v1", 32)])
def test_automatic_split_on_registry_models(arch, size):
    model = RegressionModel(build_model(arch, 3), (size, size)).eval()
    x = torch.rand(2, 3, size, size)
    h, y = model.forward_with_features(x)
    assert y.shape == (2, 3) and h.dim() == 2
    torch.testing.assert_close(model.head(h), y)
    torch.testing.assert_close(model(x), y)
    assert model.head_name == "fc"


class Custom(nn.Module):
    """A head that is not named fc, with a Linear used earlier too."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.early = nn.Linear(4, 6)
        self.out_layer = nn.Linear(6, 2)

    def forward(self, x):
        z = self.conv(x).mean((2, 3))
        return self.out_layer(torch.relu(self.early(z)))


class NoLinearHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return torch.tanh(self.lin(x.mean((2, 3))))


def test_split_custom_module():
    m = RegressionModel(Custom(), (8, 8))
    assert m.head_name == "out_layer"
    h, y = m.forward_with_features(torch.rand(3, 3, 8, 8))
    assert h.shape == (3, 6)


def test_split_error_without_final_linear():
    with pytest.raises(DrmguardError, match="`feature_layer`"):
        RegressionModel(NoLinearHead(), (8, 8))


def test_mobilenet_v1_structure():
    m = build_model("mobilenet_v1", 2)
    dw = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d) and mod.groups > 1]
    assert len(dw) == 13  # 13 depthwise-separable blocks


def test_save_load_roundtrip(tmp_path):
    model = RegressionModel(build_model("small_resnet", 2, widths=[4, 8]), (16, 16),
                            mean=[0.5] * 3, std=[0.25] * 3).eval()
    save_model(model, tmp_path / "m", model_meta(model, "small_resnet", GAZE, {"widths": [4, 8]}))
    back, meta = load_model(tmp_path / "m")
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(back(x), model(x))
    assert meta["task"]["name"] == "gaze"
    with pytest.raises(DrmguardError):
        save_model(model, tmp_path / "m", meta)  # never overwrite


def test_pickle_payload_executes_nothing_by_default(tmp_path):
    marker = tmp_path / "pwned"
    f = write_payload(tmp_path / "model.pt", marker)
    with pytest.raises(DrmguardError, match="allow-pickle"):
        load_model(f)
    assert not marker.exists()


def test_device_layout_is_plain_on_cpu_and_restores_nchw(monkeypatch, tmp_path):
    import drmguard.utils as utils

    model = RegressionModel(build_model("small_resnet", 2), (16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with utils.device_layout(model, torch.device("cpu")) as fmt:
        assert fmt == torch.contiguous_format
        assert all(p.is_contiguous() for p in model.parameters())
    # the CUDA branch (channels-last) without a GPU: layout only, no forward pass
    monkeypatch.setattr(utils, "memory_format_for", lambda device: torch.channels_last)
    convs = [p for p in model.parameters() if p.dim() == 4]
    with utils.device_layout(model, torch.device("cpu")) as fmt:
        assert fmt == torch.channels_last
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        assert any(not p.is_contiguous() for p in convs)  # 3×3 kernels really changed layout
    assert all(p.is_contiguous() for p in model.parameters())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    save_model(model, tmp_path / "m", {"arch": "small_resnet"})  # safetensors needs contiguous
