"""ResNet backbones on timm (torchvision architecture and key names; weights ``tv_in1k`` = torchvision's).

Original layer l (``layer1``..``layer4``, strides 4..32) is timm feature index l: index 0 is the
stride-2 stem, which the original never outputs.
"""
from __future__ import annotations

from typing import Sequence

import timm
from torch import nn

from models.backbones.backbone_info import derive_backbone_kwargs, resolve_outlayers
from models.backbones.efficientnet import Pretrained, check_pretrained
from models.backbones.feature_backbone import FeatureBackbone
from models.backbones.pretrained_weights import create_from_hub, load_file_into

_ALL_LEVELS = (0, 1, 2, 3, 4)
_TORCHVISION_FILES = {
    "resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth", "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth", "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
}


def _build(name: str, pretrained: Pretrained, outlayers: Sequence[int] | None,
           outstrides: Sequence[int] | None, outblocks: Sequence[int] | None) -> FeatureBackbone:
    check_pretrained(name, pretrained)
    layers = resolve_outlayers(name, outlayers, outblocks, outstrides)
    if pretrained is True:
        hint = f"'pretrained: /path/to/{_TORCHVISION_FILES[name]}' (torchvision) or a timm state dict for {name}"
        body = create_from_hub(f"{name}.tv_in1k", hint, features_only=True, out_indices=_ALL_LEVELS)
    else:
        body = timm.create_model(name, pretrained=False, features_only=True, out_indices=_ALL_LEVELS)
    strides = derive_backbone_kwargs(name, layers)["outstrides"]
    backbone = FeatureBackbone(body, list(layers), strides, name)
    if isinstance(pretrained, str):
        load_file_into(backbone, pretrained)
    return backbone


def resnet18(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
             outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None) -> nn.Module:
    """ResNet-18, layers 1..4 = 64/128/256/512 channels at strides 4/8/16/32. Args as ``resnet50``."""
    return _build("resnet18", pretrained, outlayers, outstrides, outblocks)


def resnet34(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
             outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None) -> nn.Module:
    """ResNet-34, layers 1..4 = 64/128/256/512 channels at strides 4/8/16/32. Args as ``resnet50``."""
    return _build("resnet34", pretrained, outlayers, outstrides, outblocks)


def resnet50(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
             outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None) -> nn.Module:
    """ResNet-50: input ``{"image": [B,3,H,W]}`` -> ``{"features", "strides"}``.

    Args:
        pretrained: True (timm hub ``resnet50.tv_in1k``), a path to a torchvision / timm state
            dict (the ``fc`` head is dropped), or False (random init).
        outlayers: layers 1..4 (256/512/1024/2048 channels, strides 4/8/16/32); default [1,2,3,4].
        outstrides: derived value (config loader), checked against ``outlayers``.
        outblocks: must be None (ResNets have no original block numbering).
    """
    return _build("resnet50", pretrained, outlayers, outstrides, outblocks)


def resnet101(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
              outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None) -> nn.Module:
    """ResNet-101, layers 1..4 = 256/512/1024/2048 channels at strides 4..32. Args as ``resnet50``."""
    return _build("resnet101", pretrained, outlayers, outstrides, outblocks)


def wide_resnet50_2(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
                    outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None) -> nn.Module:
    """Wide ResNet-50-2, layers 1..4 = 256/512/1024/2048 channels at strides 4..32. Args as ``resnet50``."""
    return _build("wide_resnet50_2", pretrained, outlayers, outstrides, outblocks)
