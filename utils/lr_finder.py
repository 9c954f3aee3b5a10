"""Learning-rate range test: train briefly while the lr grows exponentially, watch the loss.

The probe (Smith, "Cyclical learning rates", 2017; the fast.ai "lr finder"): step ``i`` of ``n``
trains at ``lr_i = start * (end / start) ** (i / (n - 1))``. The loss is smoothed with a debiased
exponential moving average (``beta`` = 0.98 by default, as usual for this test); the sweep stops
early once the smoothed loss exceeds ``diverge`` (4) times its best value or a loss is not finite.

Suggested lr (:func:`suggest_lr`):

* ``steepest``: the lr where the smoothed loss falls fastest per decade of lr (the most negative
  slope of smoothed loss against log10(lr), across a window of a fifth of the points, after the
  first tenth), looked for before the smoothed minimum;
* ``min/10``: one decade below the lr of the lowest smoothed loss, used when the curve is too short
  to have such a window before its minimum.

Both are clamped to the swept range. The probe changes the weights and the optimizer state it is
given; callers use throw-away copies and save nothing.
"""
from __future__ import annotations

import csv
import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import cv2
import numpy as np
import torch
from torch import nn

MIN_POINTS_FOR_SLOPE = 3


@dataclass
class RangeTestResult:
    """One sweep: per step lr, raw loss and smoothed loss; the suggestion and how it was chosen."""
    lrs: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    smoothed: list = field(default_factory=list)
    stop_reason: str = "reached end_lr"
    suggestion: float = float("nan")
    method: str = ""


def lr_at(step: int, start_lr: float, end_lr: float, num_iter: int) -> float:
    """The exponential sweep: ``start_lr`` at step 0, ``end_lr`` at step ``num_iter - 1``."""
    return start_lr * (end_lr / start_lr) ** (step / max(num_iter - 1, 1))


def check_sweep(start_lr: float, end_lr: float, num_iter: int) -> None:
    """Clear errors for a sweep that cannot run (the CLI's arguments)."""
    if not (math.isfinite(start_lr) and start_lr > 0 and math.isfinite(end_lr) and end_lr > start_lr):
        raise ValueError(f"--start-lr {start_lr} and --end-lr {end_lr} must be finite with 0 < start < end "
                         "(e.g. --start-lr 1e-7 --end-lr 1)")
    if num_iter < 2:
        raise ValueError(f"--num-iter {num_iter} must be at least 2 (e.g. 100)")


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, scales: list) -> None:
    """Every group at ``lr`` times its ratio to the first group (param_groups' lr_scale survives)."""
    for group, scale in zip(optimizer.param_groups, scales):
        group["lr"] = lr * scale


def _batches(loader) -> Iterable[dict]:
    """The loader's batches epoch after epoch (the sampler is told the epoch, as in training)."""
    for epoch in itertools.count():
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader


def range_test(model: nn.Module, loader, criterion: Callable[[dict], dict], optimizer: torch.optim.Optimizer,
               start_lr: float = 1e-7, end_lr: float = 1.0, num_iter: int = 100, beta: float = 0.98,
               diverge: float = 4.0, clip_max_norm: Optional[float] = None,
               model_start: Optional[str] = None) -> RangeTestResult:
    """Run the sweep; ``loader`` yields batch dicts, ``criterion(outputs)`` named losses (summed).

    ``model_start``: the ModelHelper child to start at (cached features). The weights and the
    optimizer are trained in place.
    """
    check_sweep(start_lr, end_lr, num_iter)
    first = optimizer.param_groups[0]["lr"] or 1.0
    scales = [(g["lr"] / first) if first else 1.0 for g in optimizer.param_groups]
    result, avg, best = RangeTestResult(), 0.0, math.inf
    model.train()
    for step, batch in zip(range(num_iter), _batches(loader)):
        lr = lr_at(step, start_lr, end_lr, num_iter)
        _set_lr(optimizer, lr, scales)
        outputs = model(batch) if model_start is None else model(batch, start=model_start)
        loss = sum(criterion(outputs).values())
        value = float(loss.detach())
        if not math.isfinite(value):
            result.stop_reason = f"non-finite loss at lr {lr:.3g}"
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_max_norm:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip_max_norm)
        optimizer.step()
        avg = beta * avg + (1 - beta) * value
        smooth = avg / (1 - beta ** (step + 1))  # debiased: the first values are not pulled to 0
        result.lrs.append(lr)
        result.losses.append(value)
        result.smoothed.append(smooth)
        best = min(best, smooth)
        if smooth > diverge * best:
            result.stop_reason = f"loss diverged (> {diverge:g} x best) at lr {lr:.3g}"
            break
    if not result.lrs:
        raise ValueError(f"the range test recorded no step (stopped: {result.stop_reason}); lower --start-lr")
    result.suggestion, result.method = suggest_lr(result.lrs, result.smoothed)
    return result


def suggest_lr(lrs: list, smoothed: list) -> tuple[float, str]:
    """(lr, method): the steepest descent before the smoothed minimum, else min-loss lr / 10.

    The slope is measured across a window of a fifth of the points (per-batch noise survives the
    moving average; a wide window does not follow it), skipping the first tenth (where the average
    has seen few batches); the suggestion is the centre of the steepest window.
    """
    lrs_arr, loss = np.asarray(lrs, dtype=np.float64), np.asarray(smoothed, dtype=np.float64)
    lowest, n = int(np.argmin(loss)), len(loss)
    window, skip = max(1, n // 5), n // 10
    starts = np.arange(skip, lowest - window + 1)
    if lowest + 1 >= MIN_POINTS_FOR_SLOPE and len(starts):
        log_lr = np.log10(lrs_arr)
        slopes = (loss[starts + window] - loss[starts]) / (log_lr[starts + window] - log_lr[starts])
        return float(lrs_arr[starts[int(np.argmin(slopes))] + window // 2]), "steepest"
    return float(np.clip(lrs_arr[lowest] / 10, lrs_arr.min(), lrs_arr.max())), "min/10"


# ------------------------------------------------------------------------------------- outputs
def write_csv(result: RangeTestResult, path: str) -> None:
    """``step,lr,loss,smoothed_loss`` per recorded step."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        table = csv.writer(handle)
        table.writerow(["step", "lr", "loss", "smoothed_loss"])
        for step, row in enumerate(zip(result.lrs, result.losses, result.smoothed)):
            table.writerow([step, *(f"{v:.8g}" for v in row)])


def plot_png(result: RangeTestResult, path: str, width: int = 900, height: int = 540) -> None:
    """Loss (grey) and smoothed loss (blue) against lr on a log axis, the suggestion in red (OpenCV)."""
    canvas = np.full((height, width, 3), 255, np.uint8)
    box = (70, 30, width - 30, height - 60)  # left, top, right, bottom of the plot area
    x_of, y_of, y_range = _axes(result, box)
    _draw_frame(canvas, box, x_of, y_of, result, y_range)
    for values, color, thickness in ((result.losses, (170, 170, 170), 1), (result.smoothed, (200, 90, 0), 2)):
        points = np.array([[x_of(l), y_of(v)] for l, v in zip(result.lrs, values)], np.int32)
        cv2.polylines(canvas, [points.reshape(-1, 1, 2)], False, color, thickness, cv2.LINE_AA)
    x = x_of(result.suggestion)
    cv2.line(canvas, (x, box[1]), (x, box[3]), (0, 0, 220), 1, cv2.LINE_AA)
    cv2.putText(canvas, f"suggested lr {result.suggestion:.2e} ({result.method})", (box[0] + 10, box[1] + 20),
                cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 220), 1, cv2.LINE_AA)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, canvas):
        raise OSError(f"cv2.imwrite could not write {path}: check the folder's permissions")


def _axes(result: RangeTestResult, box: tuple):
    """Pixel mappings: log10(lr) to x; loss to y, clipped at 4x the best smoothed loss for legibility."""
    left, top, right, bottom = box
    lo_x, hi_x = math.log10(min(result.lrs)), math.log10(max(result.lrs))
    hi_x = hi_x if hi_x > lo_x else lo_x + 1
    values = np.asarray(result.losses + result.smoothed, dtype=np.float64)
    best = min(result.smoothed)
    lo_y, hi_y = float(values.min()), float(min(values.max(), best + 3 * abs(best)))  # 4x best for losses > 0
    hi_y = hi_y if hi_y > lo_y else lo_y + 1

    def x_of(lr: float) -> int:
        return int(round(left + (math.log10(lr) - lo_x) / (hi_x - lo_x) * (right - left)))

    def y_of(v: float) -> int:
        return int(round(bottom - (min(max(v, lo_y), hi_y) - lo_y) / (hi_y - lo_y) * (bottom - top)))
    return x_of, y_of, (lo_y, hi_y)


def _draw_frame(canvas: np.ndarray, box: tuple, x_of, y_of, result: RangeTestResult, y_range: tuple) -> None:
    left, top, right, bottom = box
    black, font = (0, 0, 0), cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(canvas, (left, top), (right, bottom), black, 1)
    for decade in range(math.floor(math.log10(min(result.lrs))), math.ceil(math.log10(max(result.lrs))) + 1):
        x = x_of(10.0 ** decade)
        if left <= x <= right:
            cv2.line(canvas, (x, bottom), (x, bottom + 5), black, 1)
            cv2.putText(canvas, f"1e{decade}", (x - 18, bottom + 22), font, 0.45, black, 1, cv2.LINE_AA)
    for value in np.linspace(*y_range, 5):
        y = y_of(value)
        cv2.line(canvas, (left - 5, y), (left, y), black, 1)
        cv2.putText(canvas, f"{value:.3g}", (5, y + 4), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, "learning rate (log scale)", (left + (right - left) // 2 - 90, bottom + 48), font, 0.5,
                black, 1, cv2.LINE_AA)
    cv2.putText(canvas, "loss", (5, top - 10), font, 0.5, black, 1, cv2.LINE_AA)
