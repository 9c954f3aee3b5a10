"""One training epoch and one validation pass, with explicit arguments (no globals)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn

from utils import dist_helper
from utils.misc_helper import AverageMeter, train_log_line
from utils.speed_switches import autocast


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops before the optimizer step."""


@dataclass
class EpochPlan:
    """What the epoch needs to know about the run, for logging and the ETA."""
    epoch: int                 # 0-based
    max_epoch: int
    print_freq: int = 1
    tb_freq: int = 1
    clip_max_norm: Optional[float] = None
    accumulate_steps: int = 1
    start_epoch: int = 0       # first epoch of this process (the ETA counts from here)
    run_start: float = field(default_factory=time.time)
    model_start: Optional[str] = None   # ModelHelper child to start at (cached features)
    amp: bool = False          # bf16 autocast around the forward (utils.speed_switches.resolve_amp)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, clip: Optional[float]) -> None:
    if clip:
        params = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_norm=clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _check_finite(loss_value: float, plan: EpochPlan, it: int) -> None:
    if not np.isfinite(loss_value):
        raise NonFiniteLossError(
            f"non-finite loss ({loss_value}) at epoch {plan.epoch + 1}, iteration {it + 1}: "
            "lower trainer.optimizer.kwargs.lr or check the data; the last good checkpoint is kept")


def _eta(plan: EpochPlan, it: int, iters: int, batch_avg: float) -> float:
    """Seconds left in the run, from the mean iteration time since this process started."""
    done = (plan.epoch - plan.start_epoch) * iters + it + 1
    left = (plan.max_epoch - plan.epoch) * iters - it - 1
    elapsed = time.time() - plan.run_start
    per_iter = elapsed / max(done, 1) if done > 3 else batch_avg
    return per_iter * max(left, 0)


def train_one_epoch(model: nn.Module, loader: Iterable[dict], criterion: Callable[[dict], dict],
                    optimizer: torch.optim.Optimizer, plan: EpochPlan, logger: logging.Logger,
                    writer: Any = None) -> float:
    """Train one epoch; return the mean training loss of this rank.

    ``loader`` yields batch dicts (``image`` or, with the feature cache, ``feature_align``);
    ``criterion(outputs)`` returns named weighted losses, summed for the backward pass. The loss
    is averaged across ranks for logging and the finiteness check, so every rank stops together.
    """
    model.train()
    iters = len(loader)
    batch_time, data_time, losses = AverageMeter(plan.print_freq), AverageMeter(plan.print_freq), AverageMeter(0)
    optimizer.zero_grad(set_to_none=True)
    end = time.time()
    for it, batch in enumerate(loader):
        data_time.update(time.time() - end)
        with autocast(model, plan.amp):
            outputs = model(batch) if plan.model_start is None else model(batch, start=plan.model_start)
            loss = sum(criterion(outputs).values())
        reduced = dist_helper.all_reduce_mean(loss.detach()).item()
        _check_finite(reduced, plan, it)  # before any update, so the weights stay good
        (loss / plan.accumulate_steps).backward()
        if (it + 1) % plan.accumulate_steps == 0 or it + 1 == iters:
            _step(model, optimizer, plan.clip_max_norm)
        losses.update(reduced)
        batch_time.update(time.time() - end)
        _log_iteration(plan, it, iters, batch_time, data_time, losses, optimizer, logger, writer)
        end = time.time()
    return losses.avg


def _log_iteration(plan, it, iters, batch_time, data_time, losses, optimizer, logger, writer) -> None:
    step = plan.epoch * iters + it + 1
    lr = optimizer.param_groups[0]["lr"]
    if (it + 1) % plan.print_freq == 0 or it + 1 == iters:
        logger.info(train_log_line(plan.epoch + 1, plan.max_epoch, it + 1, iters, batch_time, data_time,
                                   losses, lr, _eta(plan, it, iters, batch_time.avg)))
    if writer is not None and (it + 1) % plan.tb_freq == 0:
        writer.add_scalar("train/loss", losses.val, step)
        writer.add_scalar("train/lr", lr, step)


@dataclass
class EvalResults:
    """Everything one validation produced, gathered on every rank in dataset order."""
    fileinfos: list            # dicts: filename, height, width, clsname, label
    preds: np.ndarray          # [N, H, W] float32 anomaly maps
    masks: np.ndarray          # [N, H, W] uint8 ground truth
    loss: float


@torch.no_grad()
def run_evaluation(model: nn.Module, loader: Iterable[dict], criterion: Callable[[dict], dict],
                   model_start: Optional[str] = None, amp: bool = False) -> EvalResults:
    """Forward the test set in eval mode (under bf16 autocast when ``amp``); gather every rank's
    shard (rank order = dataset order)."""
    model.eval()
    infos, preds, masks, loss_sum, count = [], [], [], 0.0, 0
    for batch in loader:
        with autocast(model, amp):
            outputs = model(batch) if model_start is None else model(batch, start=model_start)
            n = outputs["pred"].shape[0]
            loss_sum += float(sum(criterion(outputs).values())) * n
        count += n
        preds.append(outputs["pred"][:, 0].float().cpu().numpy())
        masks.append((batch["mask"][:, 0] > 0).to(torch.uint8).cpu().numpy())
        infos += _fileinfos(batch, n)
    local = (infos, _cat(preds), _cat(masks), loss_sum, count)
    parts = dist_helper.all_gather_object(local)
    total = sum(p[4] for p in parts)
    return EvalResults(fileinfos=[i for p in parts for i in p[0]],
                       preds=_cat([p[1] for p in parts if len(p[1])]),
                       masks=_cat([p[2] for p in parts if len(p[2])]),
                       loss=sum(p[3] for p in parts) / max(total, 1))


def _cat(arrays: list) -> np.ndarray:
    return np.concatenate(arrays, axis=0) if arrays else np.zeros((0, 0, 0), np.float32)


def _fileinfos(batch: dict, n: int) -> list:
    keys = ("filename", "height", "width", "clsname", "label")
    out = []
    for i in range(n):
        info = {}
        for k in keys:
            if k in batch:
                v = batch[k][i]
                info[k] = v.item() if torch.is_tensor(v) else v
        out.append(info)
    return out
