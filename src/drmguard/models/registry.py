"""Architecture registry: name -> factory(num_outputs, in_channels, **kwargs) -> nn.Module."""

from __future__ import annotations

from torch import nn

from ..registry import Registry
from .mobilenet import MobileNetV1
from .small import SmallResNet


def _torchvision_resnet(depth: int):
    def build(num_outputs: int, in_channels: int = 3, **kw) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, f"resnet{depth}")(weights=None, **kw)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        model.fc = nn.Linear(model.fc.in_features, num_outputs)  # dense head, no activation
        return model
    return build


ARCHS: Registry = Registry("architecture")  # name -> Callable[..., nn.Module]
ARCHS.register("small_resnet", SmallResNet)
ARCHS.register("resnet18", _torchvision_resnet(18))
ARCHS.register("resnet34", _torchvision_resnet(34))
ARCHS.register("mobilenet_v1", MobileNetV1)


def build_model(arch: str, num_outputs: int, in_channels: int = 3, **kwargs) -> nn.Module:
    return ARCHS.get(arch)(num_outputs=num_outputs, in_channels=in_channels, **kwargs)


def list_models() -> list[str]:
    """The built-in architecture names."""
    return ARCHS.list()
