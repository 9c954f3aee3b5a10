"""Static TF-"SAME" padding fixed for one image size, as the original (lukemelas) EfficientNet does.

lukemelas' ``Conv2dStaticSamePadding`` computes each conv's pad once, for the image size the
variant was designed for (B4: 380 px), and applies it whatever size the input has. timm's
``Conv2dSame`` recomputes the pad for the actual input, which shifts the sampling grid of some
stride-2 convs (B4 ``blocks.2.0.conv_dw`` at 224 px: (1,2,1,2) instead of (2,2,2,2)) and changes
features from level 3 on (uniad_official.md sections 4.2 and 4.12).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn


def same_pad_amounts(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) zero padding of TF "SAME" for one spatial dimension of length ``size``."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class StaticSamePadConv2d(nn.Conv2d):
    """``F.pad(x, pad)`` then a conv with padding 0; ``pad`` = (left, right, top, bottom), fixed.

    Same parameter names as ``nn.Conv2d`` (``weight``, ``bias``), so a swapped-in adapter leaves
    the model's state_dict keys unchanged. x [B,C_in,H,W] -> [B,C_out,H',W'].
    """

    def __init__(self, *args, pad: tuple[int, int, int, int], **kwargs):
        super().__init__(*args, padding=0, **kwargs)
        self.pad = tuple(int(p) for p in pad)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, pad: tuple[int, int, int, int]) -> "StaticSamePadConv2d":
        """An adapter sharing ``conv``'s parameters (no copy), padding by ``pad``."""
        with torch.device("meta"):  # the parameters are replaced below: skip a wasted random init
            new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, pad=pad)
        new.weight = conv.weight
        new.bias = conv.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(F.pad(x, self.pad), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, static_pad={self.pad}"


def apply_static_same_padding(model: nn.Module, image_size: int) -> dict[str, tuple[int, int, int, int]]:
    """Swap every timm ``Conv2dSame`` in ``model`` for a ``StaticSamePadConv2d`` padded for ``image_size``.

    The size reaching each conv is tracked as lukemelas does: it starts at ``image_size`` and every
    strided conv maps s -> ceil(s / stride). Convs are visited in registration order, which for
    timm's EfficientNets is execution order. Returns {module name: (left, right, top, bottom)}.
    """
    height = width = image_size
    pads = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Conv2d):
            continue
        if isinstance(module, Conv2dSame):
            top, bottom = same_pad_amounts(height, module.kernel_size[0], module.stride[0], module.dilation[0])
            left, right = same_pad_amounts(width, module.kernel_size[1], module.stride[1], module.dilation[1])
            pads[name] = (left, right, top, bottom)
            model.set_submodule(name, StaticSamePadConv2d.from_conv(module, pads[name]))
        height, width = math.ceil(height / module.stride[0]), math.ceil(width / module.stride[1])
    return pads
