"""Per-epoch learning-rate schedules with the original's timing, plus linear warm-up.

Usage: build once, train epoch ``t`` at ``optimizer.param_groups[g]["lr"]``, then call
``scheduler.step()`` (no argument) once after each epoch.

The original timing. The original calls the deprecated ``scheduler.step(epoch)`` after training
epoch ``epoch``; torch then evaluates the schedule's closed form at ``epoch``. So epoch 0 trains at
the base lr and epoch ``t >= 1`` at ``closed_form(t - 1)``: with ``StepLR(800, 0.1)`` epochs 0..800
train at 1e-4 and 801..999 at 1e-5 (one epoch later than standard ``step()`` timing, which would
decay at 800). :class:`EpochLR` reproduces exactly that lr for every epoch (same float expression
as torch's closed forms) with the supported ``step()`` call. It covers ``StepLR``, ``MultiStepLR``
and ``CosineAnnealingLR``, named bare or by their ``torch.optim.lr_scheduler`` path.

Any other dotted type is built as is (``type(optimizer, **kwargs)``) and keeps torch's standard
timing (epoch ``t`` trains at the lr after ``t`` steps); it does not compose with warm-up.

Warm-up (seed §11.1): for ``t < warmup_epochs`` the lr is multiplied by ``(t + 1) / warmup_epochs``
(so a constant schedule gives ``base * (t + 1) / warmup``); the schedule's own clock is not shifted.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from typing import Any, Callable, Mapping

import torch
from torch.optim import lr_scheduler as torch_sched

from utils.registry import instantiate, resolve

DEFAULT_MODULES = ("torch.optim.lr_scheduler",)


def _step_lr(base_lr: float, epoch: int, step_size: int, gamma: float = 0.1) -> float:
    return base_lr * gamma ** (epoch // step_size)


def _multistep_lr(base_lr: float, epoch: int, milestones: list, gamma: float = 0.1) -> float:
    return base_lr * gamma ** bisect_right(sorted(milestones), epoch)


def _cosine_lr(base_lr: float, epoch: int, T_max: int, eta_min: float = 0.0) -> float:
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * epoch / T_max)) / 2


# torch class -> (closed form, required kwargs, optional kwargs)
CLOSED_FORMS: dict[str, tuple[Callable[..., float], tuple[str, ...], tuple[str, ...]]] = {
    "StepLR": (_step_lr, ("step_size",), ("gamma",)),
    "MultiStepLR": (_multistep_lr, ("milestones",), ("gamma",)),
    "CosineAnnealingLR": (_cosine_lr, ("T_max",), ("eta_min",)),
}


class EpochLR(torch_sched.LRScheduler):
    """Closed-form per-epoch schedule with the original's one-epoch delay and linear warm-up.

    ``kind`` is a key of :data:`CLOSED_FORMS`, ``params`` its kwargs (plain values, so the state
    dict loads with ``weights_only``). The lr of epoch ``t`` (= ``last_epoch`` after ``t`` steps)
    is ``base`` for ``t == 0`` and ``closed_form(base, t - 1)`` after, times the warm-up factor.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, params: Mapping[str, Any],
                 warmup_epochs: int = 0) -> None:
        self.kind = kind
        self.params = _checked_params(kind, params)
        self.warmup_epochs = _checked_warmup(warmup_epochs)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [self.lr_at(base_lr, self.last_epoch) for base_lr in self.base_lrs]

    def lr_at(self, base_lr: float, epoch: int) -> float:
        """The lr used to train ``epoch`` (0-based) for a group whose base lr is ``base_lr``."""
        closed_form = CLOSED_FORMS[self.kind][0]
        lr = base_lr if epoch == 0 else closed_form(base_lr, epoch - 1, **self.params)
        if epoch < self.warmup_epochs:
            lr = lr * (epoch + 1) / self.warmup_epochs
        return lr

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the progress (epoch, base lrs); the schedule's definition stays the config's."""
        definition = (self.kind, self.params, self.warmup_epochs)
        super().load_state_dict(state_dict)
        self.kind, self.params, self.warmup_epochs = definition


def _checked_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Plain copy of the kwargs after checking names (typos and missing keys are errors)."""
    _, required, optional = CLOSED_FORMS[kind]
    where = f"trainer.lr_scheduler (type {kind}) kwargs"
    unknown = [key for key in params if key not in required + optional]
    missing = [key for key in required if key not in params]
    if unknown or missing:
        raise ValueError(f"{where}: unknown {unknown}, missing {missing}; accepted "
                         f"{list(required + optional)}")
    return {key: list(value) if isinstance(value, (list, tuple)) else value
            for key, value in params.items()}


def _checked_warmup(warmup_epochs: int) -> int:
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
        raise ValueError(f"trainer.warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
    return warmup_epochs


def build_scheduler(sched_cfg: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                    warmup_epochs: int = 0) -> torch_sched.LRScheduler:
    """The epoch scheduler for ``trainer.lr_scheduler`` = ``{type, kwargs}``; step it per epoch."""
    if not sched_cfg or not sched_cfg.get("type"):
        raise ValueError(f"trainer.lr_scheduler needs a 'type' (e.g. StepLR), got {sched_cfg!r}")
    type_path = sched_cfg["type"]
    kwargs = dict(sched_cfg.get("kwargs") or {})
    kind = _closed_form_kind(resolve(type_path, DEFAULT_MODULES))
    if kind is not None:
        return EpochLR(optimizer, kind, kwargs, warmup_epochs)
    if _checked_warmup(warmup_epochs) > 0:
        raise ValueError(f"trainer.warmup_epochs composes with {list(CLOSED_FORMS)}; "
                         f"for '{type_path}' set warmup_epochs: 0 or build warm-up into it")
    return instantiate(type_path, kwargs, DEFAULT_MODULES, where="trainer.lr_scheduler",
                       optimizer=optimizer)


def _closed_form_kind(scheduler_cls: Any) -> str | None:
    """The CLOSED_FORMS key of a torch scheduler class we reproduce, else None."""
    for name in CLOSED_FORMS:
        if scheduler_cls is getattr(torch_sched, name):
            return name
    return None
