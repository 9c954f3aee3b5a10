"""``FeatureBackbone``: a timm ``features_only`` network behind UniAD's dict-in / dict-out protocol."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class FeatureBackbone(nn.Module):
    """Runs a timm features network and returns the chosen levels.

    The timm network's top-level children are registered here under their own names, so the
    state_dict keys are exactly timm's (``conv_stem.weight``, ``blocks.0.0.conv_dw.weight``;
    ``conv1.weight``, ``layer1.0.conv1.weight``). The forward stops after the last chosen level:
    deeper stages stay in the state_dict (original checkpoints hold them) but cost nothing.

    Args:
        body: timm model built with ``features_only=True`` and every level in ``out_indices``;
            its children must run one after another (true for EfficientNetFeatures and the
            ResNet FeatureListNet).
        feature_indices: timm feature indices to return, increasing.
        outstrides: the stride of each returned level (checked against timm's feature_info).
        name: the factory name, for messages.
    """

    def __init__(self, body: nn.Module, feature_indices: Sequence[int], outstrides: Sequence[int], name: str = ""):
        super().__init__()
        self.name = name or type(body).__name__
        for name, child in body.named_children():
            self.add_module(name, child)
        info = body.feature_info
        timm_strides = [info.reduction()[i] for i in feature_indices]
        if timm_strides != list(outstrides):
            raise ValueError(f"{self.name}: feature indices {list(feature_indices)} have strides "
                             f"{timm_strides} in timm, but {list(outstrides)} were expected")
        self.outplanes = [info.channels()[i] for i in feature_indices]
        self.outstrides = list(outstrides)
        self.taps = [info.module_name()[i] for i in feature_indices]
        self.steps = _expand_steps(self, self.taps)

    def get_outplanes(self) -> list[int]:
        """Channels of each returned level."""
        return list(self.outplanes)

    def get_outstrides(self) -> list[int]:
        """Stride (input pixels per feature cell) of each returned level."""
        return list(self.outstrides)

    def forward(self, input: dict) -> dict:
        """Read ``input["image"]`` [B,3,H,W]; return ``{"features": [[B,C_i,H/s_i,W/s_i], ...], "strides": [s_i]}``.

        C_i = ``get_outplanes()[i]``, s_i = ``get_outstrides()[i]`` (sizes rounded as each conv does).
        """
        x = input["image"]
        features = []
        for step in self.steps:
            x = self.get_submodule(step)(x)
            if step in self.taps:
                features.append(x)
                if len(features) == len(self.taps):
                    break
        return {"features": features, "strides": list(self.outstrides)}


def _expand_steps(root: nn.Module, taps: Sequence[str], prefix: str = "") -> list[str]:
    """Child names in execution order, descending into a child only where a tap lies inside it."""
    steps = []
    for name, child in root.named_children():
        path = prefix + name
        if any(t.startswith(path + ".") for t in taps):
            steps.extend(_expand_steps(child, taps, path + "."))
        else:
            steps.append(path)
    missing = [t for t in taps if prefix == "" and t not in steps]
    if missing:
        raise ValueError(f"feature taps {missing} are not modules on the forward path; found steps {steps}")
    return steps
