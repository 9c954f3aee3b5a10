"""Small training utilities: the logger, meters, seeding, RNG state, batch transfer, log lines.

Everything here is device-agnostic and holds no module-level state beyond what ``logging``
itself keeps per logger name.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import random
import sys
from typing import Any, Optional

import numpy as np
import torch

LOG_FORMAT = "[%(asctime)s][%(filename)15s][line:%(lineno)4d][%(levelname)8s] %(message)s"
_OWN_HANDLER = "_uniad_handler"  # marks handlers added here, so a second call replaces them


# ----------------------------------------------------------------------------------------- logging
def create_logger(name: str, log_file: Optional[str] = None, rank: int = 0) -> logging.Logger:
    """Return the named logger set up for this process.

    Rank 0 logs INFO+ to stdout and, when ``log_file`` is given, appends to that file (its folder is
    created). Other ranks log only WARNING+ to stdout and write no file. Calling it again replaces
    the handlers it added before (idempotent: no duplicated lines).
    """
    logger = logging.getLogger(name)
    for handler in [h for h in logger.handlers if getattr(h, _OWN_HANDLER, False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False  # a configured root logger would print every line twice
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rank == 0 and log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        setattr(handler, _OWN_HANDLER, True)
        logger.addHandler(handler)
    return logger


# ------------------------------------------------------------------------------------------ meters
class AverageMeter:
    """Tracks the last value, a (windowed) average and the running average of a quantity.

    ``length > 0``: ``avg`` is the mean over the last ``length`` updates (weighted by ``num``), as the
    original's windowed meter. ``length == 0``: ``avg`` is the running weighted mean. ``global_avg``
    is always the running weighted mean over every update since ``reset``.
    """

    def __init__(self, length: int = 0) -> None:
        if length < 0:
            raise ValueError(f"AverageMeter length must be >= 0, got {length}")
        self.length = length
        self.reset()

    def reset(self) -> None:
        self.window: collections.deque = collections.deque(maxlen=self.length or None)
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, num: int = 1) -> None:
        """Record ``val`` observed ``num`` times (e.g. a batch-mean loss with the batch size)."""
        val = float(val)
        self.val = val
        self.sum += val * num
        self.count += num
        if self.length > 0:
            self.window.append((val, num))
            weight = sum(n for _, n in self.window)
            self.avg = sum(v * n for v, n in self.window) / weight if weight else val
        else:
            self.avg = self.sum / self.count if self.count else val

    @property
    def global_avg(self) -> float:
        """Running weighted mean over all updates since the last reset."""
        return self.sum / self.count if self.count else 0.0


class BestTracker:
    """Best key metric, the epoch it was reached and the early-stop counter.

    ``update`` follows the original's rule for ``ckpt_best``: a value ``>=`` the best so far is
    an improvement (ties refresh the best checkpoint). NaN never improves. The counter counts
    validations since the last improvement; ``patience == 0`` disables early stopping.
    ``state_dict()`` keys are the checkpoint's ``best_metric``, ``best_epoch``,
    ``early_stop_counter``.
    """

    def __init__(self, patience: int = 0) -> None:
        if patience < 0:
            raise ValueError(f"trainer.early_stop_patience must be >= 0, got {patience}")
        self.patience = patience
        self.best_metric: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.early_stop_counter = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record a validation result after ``epoch`` epochs; True when it is the new best."""
        value = float(value)
        improved = not math.isnan(value) and (self.best_metric is None or value >= self.best_metric)
        if improved:
            self.best_metric, self.best_epoch, self.early_stop_counter = value, epoch, 0
        else:
            self.early_stop_counter += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.early_stop_counter >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "early_stop_counter": self.early_stop_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_metric = state.get("best_metric")
        self.best_epoch = state.get("best_epoch")
        self.early_stop_counter = int(state.get("early_stop_counter") or 0)


# ---------------------------------------------------------------------------------------- seeding
def set_random_seed(seed: int, reproduce: bool = False) -> None:
    """Seed every generator exactly as the original: numpy s, torch s**2, cuda s**3, random s**4.

    ``reproduce`` makes cuDNN deterministic (no autotuning); otherwise cuDNN autotunes
    (``benchmark=True``), which is faster but not bit-reproducible.
    """
    np.random.seed(seed)
    torch.manual_seed(seed ** 2)
    torch.cuda.manual_seed(seed ** 3)  # current device only, as the original; lazy on CPU machines
    random.seed(seed ** 4)
    torch.backends.cudnn.deterministic = bool(reproduce)
    torch.backends.cudnn.benchmark = not reproduce


def capture_rng_state() -> dict[str, Any]:
    """Return every RNG state as tensors and plain Python values (loadable with ``weights_only``).

    Keys: ``python`` {version, state LongTensor[625], gauss_next}, ``numpy`` {kind, keys
    LongTensor[624], pos, has_gauss, cached_gaussian}, ``torch`` ByteTensor, ``cuda`` list of
    ByteTensors (one per device; empty when CUDA is not in use).
    """
    version, state, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda_states = torch.cuda.get_rng_state_all() if _cuda_in_use() else []
    return {
        "python": {"version": version, "state": torch.tensor(state, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": list(cuda_states),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`capture_rng_state`.

    CUDA states are restored for the devices present in both the capture and this machine (a
    resume on fewer GPUs restores those it has).
    """
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for index, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


def _cuda_in_use() -> bool:
    """True when CUDA has been initialised in this process (then its RNG state matters)."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


# ------------------------------------------------------------------------------------- transfer
def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in ``batch`` (dicts, lists, tuples, nested) to ``device``.

    Non-tensors (file names, class names) pass through unchanged. Copies are non-blocking on CUDA
    (pinned host memory then overlaps the copy with compute).
    """
    device = torch.device(device)
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


# -------------------------------------------------------------------------------------- log lines
def format_eta(seconds: float) -> str:
    """Format a duration as ``h:mm:ss`` (hours may exceed 24; negatives show as 0:00:00)."""
    total = max(int(round(seconds)), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def train_log_line(epoch: int, max_epoch: int, it: int, iters: int, batch_time: AverageMeter,
                   data_time: AverageMeter, loss: AverageMeter, lr: float, eta: float) -> str:
    """The training log line (seed §3.2 format plus the ETA).

    ``Epoch: [e/E]\\tIter: [i/N]\\tTime v (avg)\\tData v (avg)\\tLoss v (avg)\\tLR lr\\tETA h:mm:ss``
    with times to 2 decimals, loss and lr to 5 decimals; ``eta`` is in seconds. The caller chooses
    the numbering (the original prints ``epoch + 1`` and the global 1-based iteration).
    """
    return (f"Epoch: [{epoch}/{max_epoch}]\tIter: [{it}/{iters}]\t"
            f"Time {batch_time.val:.2f} ({batch_time.avg:.2f})\t"
            f"Data {data_time.val:.2f} ({data_time.avg:.2f})\t"
            f"Loss {loss.val:.5f} ({loss.avg:.5f})\t"
            f"LR {lr:.5f}\tETA {format_eta(eta)}")
