"""What a run carries across epochs and restarts: the best metric, checkpoints, resume.

Checkpoint dict (``checkpoints/ckpt.pth.tar``, written every epoch, atomically):
``epoch`` (epochs completed), ``state_dict`` (unwrapped model), ``optimizer``, ``lr_scheduler``,
``best_metric``, ``best_epoch``, ``early_stop_counter``, ``metrics`` (last validation or None),
``thresholds`` (``utils.thresholds.compute_thresholds`` of this epoch's validation, with its
``epoch``, or None; also written to ``thresholds.json`` / ``thresholds_best.json``), ``config`` (plain dict), ``rng`` (rank 0's RNG states), ``version``
(``utils.checkpoint.make_checkpoint``) and ``rng_per_rank`` (every rank's, so that a multi-process
resume is exact too). Everything is a tensor or a
plain type, so it loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from torch import nn

from utils import dist_helper
from utils.checkpoint import (copy_checkpoint, load_checkpoint, load_model_state, make_checkpoint,
                              restore_training_state, save_checkpoint)
from utils.misc_helper import BestTracker, capture_rng_state, restore_rng_state
from utils.thresholds import save_thresholds_json


def record_validation(tracker: BestTracker, key: str, metrics: dict, epoch: int) -> bool:
    """Feed ``metrics[key]`` to the tracker; a key the evaluator did not compute is an error."""
    if key not in metrics:
        raise KeyError(f"evaluator.key_metric '{key}' is not among the computed metrics: "
                       f"{', '.join(sorted(metrics))}")
    return tracker.update(metrics[key], epoch)


def checkpoint_paths(cfg) -> dict:
    save_dir = cfg.saver.save_dir
    return {"latest": os.path.join(save_dir, "ckpt.pth.tar"), "best": os.path.join(save_dir, "ckpt_best.pth.tar"),
            "dir": save_dir}


def save_epoch(cfg, epoch: int, model: nn.Module, optimizer, scheduler, tracker: BestTracker,
               metrics: Optional[dict], rank: int, is_best: bool = False,
               thresholds: Optional[dict] = None) -> None:
    """Write the latest checkpoint (every epoch), the best one and ``ckpt_<epoch>`` when due."""
    rng_per_rank = dist_helper.all_gather_object(capture_rng_state())
    if rank != 0:
        return
    thresholds = None if thresholds is None else {**thresholds, "epoch": int(epoch)}
    state = make_checkpoint(epoch=epoch, model=model, optimizer=optimizer, lr_scheduler=scheduler,
                            config=cfg, metrics=metrics, thresholds=thresholds, **tracker.state_dict())
    state["rng_per_rank"] = rng_per_rank
    paths = checkpoint_paths(cfg)
    os.makedirs(paths["dir"], exist_ok=True)
    save_checkpoint(state, paths["latest"])
    if thresholds is not None:  # beside the checkpoints, for tools/infer.py and for reading
        save_thresholds_json(state["thresholds"], os.path.join(paths["dir"], "thresholds.json"))
    if metrics is not None and is_best:
        copy_checkpoint(paths["latest"], paths["best"])
        if thresholds is not None:
            save_thresholds_json(state["thresholds"], os.path.join(paths["dir"], "thresholds_best.json"))
    if metrics is not None and cfg.saver.get("always_save", False):
        copy_checkpoint(paths["latest"], os.path.join(paths["dir"], f"ckpt_{epoch}.pth.tar"))


def resume_if_any(cfg, model: nn.Module, optimizer, scheduler, tracker: BestTracker,
                  logger: logging.Logger) -> int:
    """Restore a run; return the first epoch to train.

    Priority as in the original: ``auto_resume`` (the latest checkpoint in ``save_dir``) >
    ``resume_model`` > ``load_path`` (weights only, strict; training restarts at epoch 0).
    """
    saver = cfg.saver
    latest = checkpoint_paths(cfg)["latest"]
    if saver.get("auto_resume", False) and os.path.isfile(latest):
        return _resume(latest, model, optimizer, scheduler, tracker, logger)
    if saver.get("resume_model"):
        return _resume(saver.resume_model, model, optimizer, scheduler, tracker, logger)
    if saver.get("load_path") and os.path.isfile(saver.load_path):
        logger.warning("initialising the weights from saver.load_path %s (training starts at epoch 1)",
                       saver.load_path)
        load_weights(saver.load_path, model, logger, required=True)
    elif saver.get("load_path"):
        logger.info("saver.load_path %s does not exist (yet): training starts from the initial weights",
                    saver.load_path)
    return 0


def _resume(path: str, model, optimizer, scheduler, tracker: BestTracker, logger) -> int:
    ckpt = load_checkpoint(path)
    progress = restore_training_state(ckpt, model, optimizer, scheduler, source=path)
    tracker.load_state_dict(progress)
    _restore_rng(ckpt, logger)
    logger.info("resumed from %s: %d epoch(s) done, best metric %s", path, progress["epoch"],
                progress["best_metric"])
    return int(progress["epoch"])


def _restore_rng(ckpt: dict, logger: logging.Logger) -> None:
    per_rank, rank = ckpt.get("rng_per_rank") or [], dist_helper.get_rank()
    if rank < len(per_rank) and len(per_rank) == dist_helper.get_world_size():
        restore_rng_state(per_rank[rank])
    else:
        logger.warning("the checkpoint was written by %d process(es), this run has %d: restoring rank 0's "
                       "RNG state on every rank (the run continues, but not bit-identically)",
                       len(per_rank), dist_helper.get_world_size())


def load_weights(path: Optional[str], model: nn.Module, logger: logging.Logger, required: bool) -> Optional[dict]:
    """Load only the model weights of a checkpoint, strictly; return the checkpoint dict."""
    if not path or not os.path.isfile(path):
        if required:
            raise FileNotFoundError(f"saver.load_path '{path}' is not a file: train first, or pass "
                                    "--opts saver.load_path=/path/to/ckpt.pth.tar")
        return None
    ckpt = load_checkpoint(path)
    load_model_state(model, ckpt["state_dict"] if "state_dict" in ckpt else ckpt, strict=True, source=path)
    logger.info("loaded weights from %s", path)
    return ckpt

