"""State-dict key maps between lukemelas EfficientNet-PyTorch and timm ``tf_efficientnet_*`` / ``_lite*``.

lukemelas numbers blocks flatly (``_blocks.<i>``); timm nests them by stage (``blocks.<stage>.<j>``).
Block i goes to the stage whose cumulative depth first exceeds i. Two block kinds
(uniad_official.md section 4.12):

* no expand conv (expand ratio 1, timm ``DepthwiseSeparableConv``): ``_depthwise_conv`` -> ``conv_dw``,
  ``_bn1`` -> ``bn1``, ``_project_conv`` -> ``conv_pw``, ``_bn2`` -> ``bn2``;
* with ``_expand_conv`` (timm ``InvertedResidual``): ``_expand_conv`` -> ``conv_pw``, ``_bn0`` -> ``bn1``,
  ``_depthwise_conv`` -> ``conv_dw``, ``_bn1`` -> ``bn2``, ``_project_conv`` -> ``conv_pwl``, ``_bn2`` -> ``bn3``;

SE convs map to ``se.conv_reduce`` / ``se.conv_expand`` in both. The classification head
(``_conv_head``, top-level ``_bn1``, ``_fc``; timm ``conv_head``, ``bn2``, ``classifier``) has no place in
a features-only backbone and is dropped unless ``keep_head=True``.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch
from torch import nn

STEM = {"_conv_stem": "conv_stem", "_bn0": "bn1"}
HEAD = {"_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
            "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
            "_bn2": "bn3"}

_LUKE_BLOCK = re.compile(r"^_blocks\.(\d+)\.(.+)$")
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")

StateDict = Mapping[str, torch.Tensor]


def is_lukemelas_state_dict(state_dict: StateDict) -> bool:
    """True when the keys are lukemelas style (``_conv_stem.weight``, ``_blocks.N...``)."""
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in state_dict)


def stage_depths_of(model: nn.Module) -> list[int]:
    """Blocks per stage of a timm EfficientNet (``model.blocks`` is a Sequential of stages)."""
    return [len(stage) for stage in model.blocks]


def infer_stage_depths(state_dict: StateDict) -> list[int]:
    """Stage depths of a lukemelas state dict: a new stage starts where the output channels change.

    Holds for every EfficientNet B0-B8 / Lite, whose consecutive stages all differ in width.
    """
    keys = [f"_blocks.{i}._project_conv.weight" for i in range(_num_blocks(state_dict))]
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise ValueError(f"cannot infer the stage depths: lukemelas state dict lacks {missing}")
    widths = [state_dict[k].shape[0] for k in keys]
    depths = []
    for i, width in enumerate(widths):
        if i == 0 or width != widths[i - 1]:
            depths.append(0)
        depths[-1] += 1
    return depths


def _num_blocks(state_dict: StateDict) -> int:
    indices = {int(m.group(1)) for m in map(_LUKE_BLOCK.match, state_dict) if m}
    if indices != set(range(len(indices))):
        raise ValueError(f"lukemelas block indices are not contiguous from 0: {sorted(indices)}")
    return len(indices)


def _rename(rest: str, table: Mapping[str, str]) -> str | None:
    """Map ``<module>.<tensor>`` through ``table`` (matching the module by prefix), None if unknown."""
    for src, dst in table.items():
        if rest.startswith(src + "."):
            return dst + rest[len(src):]
    return None


def _block_positions(depths: Sequence[int]) -> list[tuple[int, int]]:
    return [(stage, j) for stage, depth in enumerate(depths) for j in range(depth)]


def lukemelas_to_timm(state_dict: StateDict, stage_depths: Sequence[int] | None = None,
                      keep_head: bool = False) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet state dict to timm keys (same tensors, same order).

    ``stage_depths``: blocks per timm stage (``stage_depths_of(model)``); inferred when None.
    Raises ValueError listing every key it cannot place.
    """
    depths = list(stage_depths) if stage_depths is not None else infer_stage_depths(state_dict)
    positions = _block_positions(depths)
    if _num_blocks(state_dict) != len(positions):
        raise ValueError(f"state dict has {_num_blocks(state_dict)} lukemelas blocks, but stage depths "
                         f"{depths} hold {len(positions)}: weights of another EfficientNet variant?")
    out, unplaced = {}, []
    for key, tensor in state_dict.items():
        new = _luke_key_to_timm(key, state_dict, positions)
        if new is None:
            unplaced.append(key)
        elif not new.startswith(tuple(v + "." for v in HEAD.values())) or keep_head:
            out[new] = tensor
    if unplaced:
        raise ValueError(f"cannot place {len(unplaced)} lukemelas keys in timm's EfficientNet: {unplaced}")
    return out


def _luke_key_to_timm(key: str, state_dict: StateDict, positions: list[tuple[int, int]]) -> str | None:
    match = _LUKE_BLOCK.match(key)
    if match is None:
        return _rename(key, STEM) or _rename(key, HEAD)
    index, rest = int(match.group(1)), match.group(2)
    expands = f"_blocks.{index}._expand_conv.weight" in state_dict
    new_rest = _rename(rest, IR_BLOCK if expands else DS_BLOCK)
    if new_rest is None:
        return None
    stage, j = positions[index]
    return f"blocks.{stage}.{j}.{new_rest}"


def timm_to_lukemelas(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Inverse of ``lukemelas_to_timm``: timm EfficientNet keys -> lukemelas keys (head kept if present).

    Blocks are numbered in (stage, index) order; a block holding ``conv_pwl`` is an InvertedResidual.
    Raises ValueError listing every key it cannot place.
    """
    blocks = sorted({(int(m.group(1)), int(m.group(2))) for m in map(_TIMM_BLOCK.match, state_dict) if m})
    flat = {pos: i for i, pos in enumerate(blocks)}
    inverted = {pos: any(k.startswith(f"blocks.{pos[0]}.{pos[1]}.conv_pwl.") for k in state_dict) for pos in blocks}
    out, unplaced = {}, []
    for key, tensor in state_dict.items():
        new = _timm_key_to_luke(key, flat, inverted)
        if new is None:
            unplaced.append(key)
        else:
            out[new] = tensor
    if unplaced:
        raise ValueError(f"cannot place {len(unplaced)} timm keys in lukemelas' EfficientNet: {unplaced}")
    return out


def _timm_key_to_luke(key: str, flat: dict, inverted: dict) -> str | None:
    match = _TIMM_BLOCK.match(key)
    if match is None:
        return _rename(key, _invert(STEM)) or _rename(key, _invert(HEAD))
    pos = (int(match.group(1)), int(match.group(2)))
    new_rest = _rename(match.group(3), _invert(IR_BLOCK if inverted[pos] else DS_BLOCK))
    return None if new_rest is None else f"_blocks.{flat[pos]}.{new_rest}"


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    return {dst: src for src, dst in table.items()}
