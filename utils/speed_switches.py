"""The two speed switches of ``trainer``: ``amp`` (bf16 autocast) and ``compile`` (torch.compile).

``trainer.amp: true`` runs the forward passes (training and evaluation) under
``torch.autocast(device_type, dtype=torch.bfloat16)``; the backward pass and the optimizer stay fp32
(bf16 has fp32's exponent range, so no loss scaling is needed). It applies on CUDA only: the CPUs this
project targets have no bf16 units, where autocast would be slower and change the numbers for nothing,
so on any other device the flag is ignored with one log line. ``trainer.compile: true`` compiles the
reconstruction module in place (``nn.Module.compile``: its state_dict keys do not change, so
checkpoints stay interchangeable). It is meant for GPUs; on CPU it works where a C++ compiler exists,
after minutes of compilation, for a small gain.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch
from torch import nn


def resolve_amp(requested: bool, device: torch.device, logger: logging.Logger) -> bool:
    """Whether bf16 autocast runs: ``requested`` on a CUDA device that supports bf16, else False.

    Logs once what was decided when ``requested``; raises when the GPU cannot do bf16.
    """
    if not requested:
        return False
    if device.type != "cuda":
        logger.info("trainer.amp ignored on %s: bf16 autocast is used on CUDA devices only "
                    "(no bf16 units on these CPUs); training runs in fp32", device)
        return False
    if not torch.cuda.is_bf16_supported():
        raise ValueError(f"trainer.amp: true needs bf16 support, which {torch.cuda.get_device_name(device)} "
                         "lacks (compute capability >= 8.0); set trainer.amp=false")
    logger.info("trainer.amp: forward passes under bf16 autocast on %s", device)
    return True


def autocast(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device of ``model``'s parameters when ``enabled``, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    device_type = next(model.parameters()).device.type
    return torch.autocast(device_type, dtype=torch.bfloat16)


def compile_child(model: nn.Module, name: str, logger: logging.Logger,
                  backend: Optional[str] = None) -> None:
    """Compile ``model.<name>`` in place (``torch.compile`` with ``backend``, default inductor)."""
    child = getattr(model, name, None)
    if not isinstance(child, nn.Module):
        raise ValueError(f"trainer.compile: the model has no child module '{name}' to compile")
    child.compile(**({"backend": backend} if backend else {}))
    logger.info("trainer.compile: %s compiled with torch.compile (%s); the first steps include "
                "compilation", name, backend or "inductor")
