"""``backbone_info``: per backbone factory, its selectable layers and their block / channel / stride.

Numbers follow the original ``update_config`` table (uniad_official.md section 2.2). ``blocks`` are
the original (lukemelas) block indices that end each EfficientNet layer; ``None`` where the
original has no block numbering (ResNets) or no UniAD original at all (EfficientNet-Lite).
tests/test_backbones.py checks every row against the network timm builds.
"""
from __future__ import annotations

from typing import Sequence

_EFF_LAYERS = [1, 2, 3, 4, 5]
_EFF_STRIDES = [2, 4, 8, 16, 32]
_RES_LAYERS = [1, 2, 3, 4]
_RES_STRIDES = [4, 8, 16, 32]


def _eff(blocks: list[int] | None, planes: list[int]) -> dict:
    return {"layers": _EFF_LAYERS, "blocks": blocks, "planes": planes, "strides": _EFF_STRIDES}


def _res(planes: list[int]) -> dict:
    return {"layers": _RES_LAYERS, "blocks": None, "planes": planes, "strides": _RES_STRIDES}


backbone_info: dict[str, dict] = {
    "efficientnet_b0": _eff([0, 2, 4, 10, 15], [16, 24, 40, 112, 320]),
    "efficientnet_b1": _eff([1, 4, 7, 15, 22], [16, 24, 40, 112, 320]),
    "efficientnet_b2": _eff([1, 4, 7, 15, 22], [16, 24, 48, 120, 352]),
    "efficientnet_b3": _eff([1, 4, 7, 17, 25], [24, 32, 48, 136, 384]),
    "efficientnet_b4": _eff([1, 5, 9, 21, 31], [24, 32, 56, 160, 448]),
    "efficientnet_b5": _eff([2, 7, 12, 26, 38], [24, 40, 64, 176, 512]),
    "efficientnet_b6": _eff([2, 8, 14, 30, 44], [32, 40, 72, 200, 576]),
    "efficientnet_lite0": _eff(None, [16, 24, 40, 112, 320]),
    "efficientnet_lite1": _eff(None, [16, 24, 40, 112, 320]),
    "efficientnet_lite2": _eff(None, [16, 24, 48, 120, 352]),
    "resnet18": _res([64, 128, 256, 512]),
    "resnet34": _res([64, 128, 256, 512]),
    "resnet50": _res([256, 512, 1024, 2048]),
    "resnet101": _res([256, 512, 1024, 2048]),
    "wide_resnet50_2": _res([256, 512, 1024, 2048]),
}


def derive_backbone_kwargs(name: str, outlayers: Sequence[int]) -> dict:
    """The derived kwargs for ``outlayers``: ``{"outstrides": [...]}`` plus ``"outblocks"`` when known.

    This is what the original ``update_config`` adds to the backbone entry (it also drops
    ``outlayers`` for EfficientNets; our factories keep it and check the derived values).
    """
    info, idx = backbone_info[name], layer_positions(name, outlayers)
    kwargs = {"outstrides": [info["strides"][i] for i in idx]}
    if info["blocks"] is not None:
        kwargs["outblocks"] = [info["blocks"][i] for i in idx]
    return kwargs


def layer_positions(name: str, outlayers: Sequence[int]) -> list[int]:
    """Positions of ``outlayers`` in ``backbone_info[name]["layers"]``; ValueError names bad ones."""
    layers = backbone_info[name]["layers"]
    outlayers = list(outlayers)
    bad = [l for l in outlayers if l not in layers]
    if not outlayers or bad:
        raise ValueError(f"{name}: outlayers {outlayers} invalid (unknown {bad}); choose a non-empty "
                         f"increasing subset of {layers}")
    if sorted(set(outlayers)) != outlayers:
        raise ValueError(f"{name}: outlayers {outlayers} must be strictly increasing, e.g. {sorted(set(outlayers))}")
    return [layers.index(l) for l in outlayers]


def resolve_outlayers(name: str, outlayers: Sequence[int] | None, outblocks: Sequence[int] | None,
                      outstrides: Sequence[int] | None) -> list[int]:
    """Check the (possibly derived) arguments against each other and return the layers to output.

    ``outlayers`` None: taken from ``outblocks`` (original-style kwargs) or ``[1, 2, 3, 4]``.
    ``outblocks`` / ``outstrides`` given: they must equal what ``outlayers`` implies, else ValueError.
    """
    if outblocks is not None and backbone_info[name]["blocks"] is None:
        raise ValueError(f"{name}: outblocks {list(outblocks)} given, but this backbone has no original "
                         f"block numbering; remove outblocks and select with outlayers")
    if outlayers is None:
        outlayers = _layers_from_blocks(name, outblocks) if outblocks is not None else [1, 2, 3, 4]
    derived = derive_backbone_kwargs(name, outlayers)
    for key, given in (("outblocks", outblocks), ("outstrides", outstrides)):
        if given is not None and list(given) != derived[key]:
            raise ValueError(f"{name}: {key} {list(given)} does not match outlayers {list(outlayers)}, which "
                             f"give {key} {derived[key]} (backbone_info); remove {key} to derive it")
    return list(outlayers)


def _layers_from_blocks(name: str, outblocks: Sequence[int]) -> list[int]:
    info = backbone_info[name]
    blocks = info["blocks"]
    bad = [b for b in outblocks if b not in blocks]
    if bad:
        raise ValueError(f"{name}: outblocks {list(outblocks)} include {bad}, which end no layer; "
                         f"the layer-ending blocks are {blocks} (layers {info['layers']})")
    return [info["layers"][blocks.index(b)] for b in outblocks]
