"""Losses and the criterion built from the config's ``criterion`` list.

Each loss reads two keys of the model's output dict and returns ``weight * loss`` as a scalar
tensor. Type names are explicit: ``FeatureMSELoss``, ``FeatureL1Loss``, ``ImageMSELoss`` (a bare
name is looked up in this module, a dotted path anywhere). There is deliberately no ``L1Loss``
alias: the seed's example name would hide which tensors are compared.

Config entry: ``{name: <key in the loss dict>, type: <loss>, kwargs: {weight: 1.0}}``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.registry import instantiate

DEFAULT_MODULES = ("utils.criterion_helper",)


class _PairLoss(nn.Module):
    """``weight * reduce(f(outputs[pred_key], outputs[target_key]))`` with shape checks."""

    pred_key = ""
    target_key = ""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def _pair(self, outputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        for key in (self.pred_key, self.target_key):
            if key not in outputs:
                raise KeyError(f"{type(self).__name__} needs outputs['{key}'], which the model did "
                               f"not produce (keys: {sorted(outputs)})")
        pred, target = outputs[self.pred_key], outputs[self.target_key]
        if pred.shape != target.shape:  # broadcasting would silently compute something else
            raise ValueError(f"{type(self).__name__}: {self.pred_key} {tuple(pred.shape)} and "
                             f"{self.target_key} {tuple(target.shape)} differ in shape")
        return pred, target


class FeatureMSELoss(_PairLoss):
    """Mean squared error between ``feature_rec`` and ``feature_align`` ([B, C, h, w] each).

    The original's training loss: ``nn.MSELoss()`` (mean over every element) against the clean
    (un-jittered) aligned features.
    """

    pred_key, target_key = "feature_rec", "feature_align"

    def forward(self, outputs: Mapping[str, Any]) -> torch.Tensor:
        pred, target = self._pair(outputs)
        return self.weight * F.mse_loss(pred, target)


class FeatureL1Loss(_PairLoss):
    """Mean absolute error between ``feature_rec`` and ``feature_align`` ([B, C, h, w] each)."""

    pred_key, target_key = "feature_rec", "feature_align"

    def forward(self, outputs: Mapping[str, Any]) -> torch.Tensor:
        pred, target = self._pair(outputs)
        return self.weight * F.l1_loss(pred, target)


class ImageMSELoss(_PairLoss):
    """Mean squared error between ``image_rec`` and ``image`` ([B, 3, H, W] each); used by the
    visualisation decoder."""

    pred_key, target_key = "image_rec", "image"

    def forward(self, outputs: Mapping[str, Any]) -> torch.Tensor:
        pred, target = self._pair(outputs)
        return self.weight * F.mse_loss(pred, target)


class Criterion:
    """Ordered named losses: ``criterion(outputs) -> {name: weighted loss}`` in config order."""

    def __init__(self, losses: Sequence[tuple[str, nn.Module]]) -> None:
        if not losses:
            raise ValueError("the criterion list is empty: add at least one loss under 'criterion'")
        self.losses = list(losses)

    def __call__(self, outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {name: loss(outputs) for name, loss in self.losses}

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.losses]


def build_criterion(criterion_cfg_list: Sequence[Mapping[str, Any]]) -> Criterion:
    """Build a :class:`Criterion` from config entries ``{name, type, kwargs}`` (names unique)."""
    losses: list[tuple[str, nn.Module]] = []
    for index, entry in enumerate(criterion_cfg_list):
        name = entry.get("name")
        if not name or "type" not in entry:
            raise ValueError(f"criterion[{index}] needs 'name' and 'type', got keys {sorted(entry)}")
        if name in [n for n, _ in losses]:
            raise ValueError(f"criterion name '{name}' appears twice; names must be unique")
        loss = instantiate(entry["type"], entry.get("kwargs") or {}, DEFAULT_MODULES,
                           where=f"criterion '{name}'")
        losses.append((name, loss))
    return Criterion(losses)


def total_loss(loss_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The training loss: the sum of the weighted losses (weights are applied by each loss)."""
    if not loss_dict:
        raise ValueError("total_loss: the loss dict is empty")
    return sum(loss_dict.values())
