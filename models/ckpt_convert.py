"""Convert an original UniAD checkpoint (``ckpt.pth.tar``) to this repository's checkpoint format.

Original: ``{"epoch", "arch" (list of EasyDicts: config.net), "state_dict" ("module.backbone._blocks...",
"module.reconstruction..."), "best_metric" (often a numpy float), "optimizer"}``, written by DDP.
Ours: ``{"epoch", "state_dict" (timm backbone keys, original reconstruction keys), "best_metric"
(float), "config" (plain dict or None), "optimizer": None, "converted_from"}``.

The file is read with ``torch.load(weights_only=True)``; the only globals allowed are the ones an
original checkpoint needs (EasyDict, numpy scalars and their dtypes), and EasyDict is rebuilt as a
plain ``OrderedDict``, so no class from the file ever runs code.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np
import torch

from models.backbones.efficientnet_keymap import is_lukemelas_state_dict, lukemelas_to_timm
from utils.checkpoint import load_checkpoint, load_model_state, save_checkpoint, to_plain

_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.", "fc.")  # timm / torchvision heads
_KEPT_PREFIXES = ("reconstruction.", "neck.")


def _original_safe_globals() -> list:
    """Globals an original checkpoint pickles, mapped to harmless constructors.

    ``easydict.EasyDict`` -> ``OrderedDict`` (the restricted unpickler fills only real dicts); numpy
    scalars under both the numpy 1.x name (files from 2022) and the numpy 2.x name.
    """
    scalar = np._core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32)]
    return [(OrderedDict, "easydict.EasyDict"), (scalar, "numpy.core.multiarray.scalar"), scalar, np.dtype, *dtypes]


def load_original(path: str) -> dict:
    """Read an original checkpoint safely; ValueError names the file if it needs anything else."""
    ckpt = load_checkpoint(path, safe_globals=_original_safe_globals())
    if not isinstance(ckpt.get("state_dict"), Mapping):
        raise ValueError(f"'{path}' is not an original UniAD checkpoint: expected a dict with 'state_dict'")
    return ckpt


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DDP's ``module.``; backbone lukemelas keys -> timm (head dropped); keep neck/reconstruction.

    Raises ValueError listing keys outside ``backbone.`` / ``neck.`` / ``reconstruction.``.
    """
    plain = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    unplaced = [k for k in plain if not k.startswith(("backbone.",) + _KEPT_PREFIXES)]
    if unplaced:
        raise ValueError(f"cannot place {len(unplaced)} checkpoint keys (expected backbone.*, neck.*, "
                         f"reconstruction.*): {unplaced}")
    backbone = {k[len("backbone."):]: v for k, v in plain.items() if k.startswith("backbone.")}
    out = {f"backbone.{k}": v for k, v in convert_backbone(backbone).items()}
    out.update({k: v for k, v in plain.items() if k.startswith(_KEPT_PREFIXES)})
    return out


def convert_backbone(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lukemelas EfficientNet -> timm keys; torchvision-style ResNet keys are timm's already. Heads dropped."""
    if is_lukemelas_state_dict(state_dict):
        return lukemelas_to_timm(state_dict)
    return {k: v for k, v in state_dict.items() if not k.startswith(_HEAD_PREFIXES)}


def convert_checkpoint(ckpt: Mapping[str, Any], source: str, config: dict | None = None) -> dict:
    """Our checkpoint dict from an original one (``source``: the input path, recorded)."""
    best = ckpt.get("best_metric")
    return {
        "epoch": int(ckpt.get("epoch", 0)),
        "state_dict": convert_state_dict(ckpt["state_dict"]),
        "best_metric": None if best is None else float(best),
        "config": config,
        "optimizer": None,  # the original's param-group order is not reproducible: not carried over
        "converted_from": os.path.abspath(source),
    }


def verify_against_config(state_dict: Mapping[str, torch.Tensor], config_path: str) -> dict:
    """Build ``ModelHelper(cfg.net)`` from ``config_path`` (backbone not pretrained) and load strictly.

    Returns the config as a plain dict. Raises the strict-load error if keys or shapes differ.
    """
    from models.model_helper import ModelHelper  # imported late: conversion alone needs neither
    from utils.config_helper import load_config

    cfg = load_config(config_path, opts=["net.backbone.kwargs.pretrained=False"])
    load_model_state(ModelHelper(cfg.net), state_dict, strict=True, source=f"the converted weights ({config_path})")
    return to_plain(cfg)


def convert_file(input_path: str, output_path: str, config_path: str | None = None) -> dict:
    """Read ``input_path``, convert, optionally verify against ``config_path``, write ``output_path``.

    The output is written atomically (temporary file, then rename) by ``utils.checkpoint``.
    """
    original = load_original(input_path)
    converted = convert_checkpoint(original, input_path)
    if config_path is not None:
        converted["config"] = verify_against_config(converted["state_dict"], config_path)
    save_checkpoint(converted, output_path)
    return converted
