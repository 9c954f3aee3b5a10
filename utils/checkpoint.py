"""Checkpoints: a plain dict, written atomically, loaded with ``weights_only=True``, applied strictly.

The checkpoint dict (``CHECKPOINT_VERSION`` 1):

=====================  ==========================================================================
``epoch``              number of epochs completed (resume starts at this 0-based epoch)
``state_dict``         the unwrapped model's state_dict (no ``module.`` prefix; frozen parts too)
``optimizer``          ``optimizer.state_dict()`` (its groups carry names, see optimizer_helper)
``lr_scheduler``       ``scheduler.state_dict()``
``best_metric``        best key-metric value so far (float or None)
``best_epoch``         epochs completed when it was reached (int or None)
``early_stop_counter`` validations since the last improvement
``config``             the run's config as plain dicts/lists (:func:`to_plain`)
``rng``                :func:`utils.misc_helper.capture_rng_state` (tensors and plain values)
``metrics``            the last validation's metrics (plain floats) or None
``thresholds``         thresholds chosen on validation (plain values) or None
``version``            ``CHECKPOINT_VERSION``
=====================  ==========================================================================

Every value is a tensor or a plain Python value, so ``torch.load(weights_only=True)`` (which
refuses arbitrary classes and never runs pickled code) reads it. :func:`save_checkpoint` checks
that before writing, naming the offending key.
"""
from __future__ import annotations

import collections
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from utils.dist_helper import unwrap_model
from utils.misc_helper import capture_rng_state, restore_rng_state
from utils.optimizer_helper import load_optimizer_state

CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("epoch", "state_dict", "optimizer", "lr_scheduler", "best_metric", "config",
                 "rng", "version")
_PLAIN_LEAVES = (str, int, float, bool, type(None), torch.Tensor, torch.Size, torch.dtype,
                 torch.device)


# ---------------------------------------------------------------------------------- plain data
def to_plain(obj: Any) -> Any:
    """Recursively turn mappings (EasyDict, OrderedDict) into dicts (keys other than str/int become
    str), tuples stay tuples, lists lists, numpy scalars/arrays into Python numbers/lists and
    paths into strings."""
    if isinstance(obj, Mapping):
        return {key if isinstance(key, (str, int)) else str(key): to_plain(value)
                for key, value in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_plain(value) for value in obj)
    if isinstance(obj, list):
        return [to_plain(value) for value in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value ``weights_only`` loading would refuse."""
    if type(obj) in (dict, collections.OrderedDict):
        for key, value in obj.items():
            check_plain(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple):
        for index, value in enumerate(obj):
            check_plain(value, f"{where}[{index}]")
    elif not isinstance(obj, _PLAIN_LEAVES) or type(obj).__module__ == "numpy":
        raise TypeError(f"{where} holds a {type(obj).__module__}.{type(obj).__name__}, which "
                        "torch.load(weights_only=True) refuses; convert it with to_plain()")


# ------------------------------------------------------------------------------------ file I/O
def save_checkpoint(state: Mapping[str, Any], path: str) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A crash mid-write leaves any previous file at ``path`` intact.
    """
    check_plain(dict(state))
    _atomic_write(path, lambda handle: torch.save(dict(state), handle))


def copy_checkpoint(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` atomically (e.g. ``ckpt.pth.tar`` -> ``ckpt_best.pth.tar``)."""
    with open(src, "rb") as source:
        _atomic_write(dst, lambda handle: shutil.copyfileobj(source, handle))


def _atomic_write(path: str, write: Callable[[Any], None]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)  # then re-raise: the caller must see the failure
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    """Persist the rename itself (POSIX); folders cannot be opened this way on Windows."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str, map_location: Any = "cpu",
                    safe_globals: Iterable[Any] = ()) -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(weights_only=True)``.

    ``safe_globals``: extra classes to allow (only for files that need them, e.g. the original's
    EasyDict ``arch``). Errors name ``path``: missing file, not a checkpoint, refused content.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist; check saver.load_path / "
                                "saver.resume_model or the --checkpoint argument")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise ValueError(f"refusing to load '{path}': it holds objects other than tensors and "
                             f"plain values (weights_only=True). Detail: {str(exc)[:400]}") from exc
        raise ValueError(f"'{path}' is not a PyTorch checkpoint ({exc})") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"'{path}' is not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


# ------------------------------------------------------------------------------- model loading
@dataclass
class LoadReport:
    """What did not match when a state_dict was applied to a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple, tuple]] = field(default_factory=dict)  # key: (saved, model)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        """One line listing the problems (at most ``limit`` keys per kind, with the count)."""
        shapes = [f"{k} saved {s} vs model {m}" for k, (s, m) in self.mismatched.items()]
        parts = [_listing(label, keys, limit) for label, keys in
                 (("missing", self.missing), ("unexpected", self.unexpected),
                  ("shape-mismatched", shapes)) if keys]
        return "; ".join(parts) if parts else "all keys matched"


def _listing(label: str, keys: list[str], limit: int) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return f"{label} keys: {', '.join(keys[:limit])}{more}"


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a DDP ``module.`` prefix when every key has it."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module."):]: value for key, value in state_dict.items()}
    return dict(state_dict)


def compare_state(model_state: Mapping[str, torch.Tensor], saved: Mapping[str, Any]) -> LoadReport:
    """Missing, unexpected and shape-mismatched keys of ``saved`` against ``model_state``."""
    mismatched = {key: (tuple(saved[key].shape), tuple(value.shape))
                  for key, value in model_state.items()
                  if key in saved and tuple(saved[key].shape) != tuple(value.shape)}
    return LoadReport(missing=[k for k in model_state if k not in saved],
                      unexpected=[k for k in saved if k not in model_state],
                      mismatched=mismatched)


def load_model_state(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True,
                     source: str = "checkpoint") -> LoadReport:
    """Apply ``state_dict`` (``module.`` prefix accepted) to the unwrapped model.

    ``strict``: any missing, unexpected or shape-mismatched key raises, listing them all.
    Otherwise the matching keys are loaded and the returned report lists the rest: the caller
    must log ``report.describe()`` (a partial load is never silent).
    """
    target = unwrap_model(model)
    saved = strip_module_prefix(state_dict)
    report = compare_state(target.state_dict(), saved)
    if strict and not report.clean:
        raise RuntimeError(f"cannot load {source} into {type(target).__name__}: {report.describe()}")
    usable = {k: v for k, v in saved.items() if k not in report.mismatched and k not in report.unexpected}
    target.load_state_dict(usable, strict=False)
    return report


# ------------------------------------------------------------------------- the training state
def make_checkpoint(*, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    lr_scheduler: Any, config: Mapping[str, Any], best_metric: Optional[float] = None,
                    best_epoch: Optional[int] = None, early_stop_counter: int = 0,
                    metrics: Optional[Mapping[str, Any]] = None, thresholds: Any = None
                    ) -> dict[str, Any]:
    """The checkpoint dict described in this module's docstring (``epoch`` = epochs completed)."""
    return {
        "epoch": int(epoch),
        "state_dict": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "best_metric": None if best_metric is None else float(best_metric),
        "best_epoch": None if best_epoch is None else int(best_epoch),
        "early_stop_counter": int(early_stop_counter),
        "config": to_plain(config),
        "rng": capture_rng_state(),
        "metrics": to_plain(metrics),
        "thresholds": to_plain(thresholds),
        "version": CHECKPOINT_VERSION,
    }


def restore_training_state(ckpt: Mapping[str, Any], model: nn.Module,
                           optimizer: torch.optim.Optimizer, lr_scheduler: Any,
                           source: str = "checkpoint") -> dict[str, Any]:
    """Resume: load model (strict), optimizer, scheduler and RNG states from a full checkpoint.

    Returns the progress fields ``epoch``, ``best_metric``, ``best_epoch``, ``early_stop_counter``,
    ``metrics``, ``thresholds``. A weights-only file (e.g. an original UniAD checkpoint) lacks the
    training state: load it with :func:`load_model_state` instead (``saver.load_path``).
    """
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise ValueError(f"{source} cannot resume training: it lacks {missing} (a weights-only "
                         "checkpoint? use it as saver.load_path to initialise the model instead)")
    load_model_state(model, ckpt["state_dict"], strict=True, source=source)
    load_optimizer_state(optimizer, ckpt["optimizer"], source)
    lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    restore_rng_state(ckpt["rng"])
    return {"epoch": ckpt["epoch"], "best_metric": ckpt["best_metric"],
            "best_epoch": ckpt.get("best_epoch"), "early_stop_counter": ckpt.get("early_stop_counter", 0),
            "metrics": ckpt.get("metrics"), "thresholds": ckpt.get("thresholds")}
