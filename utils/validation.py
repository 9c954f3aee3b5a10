"""Validation reporting: metrics table, metrics.jsonl, TensorBoard scalars and heat maps, visualisations."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Optional

import numpy as np

from utils import dist_helper
from utils.engine import EvalResults, run_evaluation
from utils.eval_helper import log_metrics, performances
from utils.misc_helper import format_eta
from utils.thresholds import compute_thresholds


def open_writer(log_dir: str, rank: int) -> Any:
    """A tensorboardX writer on rank 0 (``tensorboard --logdir <log_dir>``), None elsewhere."""
    if rank != 0:
        return None
    from tensorboardX import SummaryWriter
    return SummaryWriter(log_dir)


def _json_safe(value: float) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def append_jsonl(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({k: _json_safe(v) if isinstance(v, (float, np.floating)) else v
                            for k, v in record.items()}) + "\n")


def image_reader_for(cfg) -> Optional[Any]:
    """``read(filename) -> HxWx3 uint8 RGB`` for datasets read from files, else None (e.g. CIFAR)."""
    reader_cfg = cfg.dataset.get("image_reader")
    if not reader_cfg:
        return None
    from datasets.image_reader import build_image_reader
    reader = build_image_reader(reader_cfg)
    return lambda filename: reader(filename, is_mask=False) if _takes_mask_flag(reader) else reader(filename)


def _takes_mask_flag(reader) -> bool:
    import inspect
    try:
        return "is_mask" in inspect.signature(reader.__call__).parameters
    except (TypeError, ValueError):
        return False


def validate_and_report(cfg, model, loader, criterion, epoch: Optional[int], writer, logger: logging.Logger,
                        visualize: bool = False, model_start: Optional[str] = None, amp: bool = False) -> dict:
    """Evaluate, then (rank 0) log the table, append ``log/metrics.jsonl``, write TensorBoard and
    visualisations. Every rank returns the same metrics dict."""
    return validate_with_thresholds(cfg, model, loader, criterion, epoch, writer, logger, visualize, model_start,
                                    amp)[0]


def validate_with_thresholds(cfg, model, loader, criterion, epoch: Optional[int], writer, logger: logging.Logger,
                             visualize: bool = False, model_start: Optional[str] = None, amp: bool = False
                             ) -> tuple[dict, Optional[dict]]:
    """``validate_and_report`` plus the decision thresholds of ``utils.thresholds.compute_thresholds``:
    returns (metrics on every rank, thresholds on rank 0 / None elsewhere)."""
    results = run_evaluation(model, loader, criterion, model_start, amp=amp)
    metrics, thresholds = {}, None
    if dist_helper.get_rank() == 0:
        metrics = performances(results.fileinfos, results.preds, results.masks, cfg.evaluator.metrics)
        thresholds = compute_thresholds(results.fileinfos, results.preds, results.masks, cfg.evaluator)
        _log_thresholds(logger, thresholds)
        logger.info(" * loss %.5f over %d images (epoch %s)", results.loss, len(results.fileinfos), epoch)
        log_metrics(metrics, cfg.evaluator.metrics, logger)
        append_jsonl(os.path.join(cfg.saver.log_dir, "metrics.jsonl"),
                     {"epoch": epoch, "loss": results.loss, **metrics})
        _write_tensorboard(cfg, writer, results, metrics, epoch)
        if visualize:
            _visualize(cfg, results, logger)
    return dist_helper.all_gather_object(metrics)[0], thresholds


def _log_thresholds(logger: logging.Logger, thresholds: dict) -> None:
    found = thresholds["global"]
    parts = [f"{level} >= {found[level]['threshold']:.6g} (F1 {found[level]['f1']:.4f})"
             for level in ("image", "pixel") if found[level]]
    logger.info(" * thresholds (all classes, %s score): %s", thresholds["image_score"]["name"],
                ", ".join(parts) or "none (no defective sample)")


def _write_tensorboard(cfg, writer, results: EvalResults, metrics: dict, epoch: Optional[int]) -> None:
    if writer is None:
        return
    step = epoch or 0
    writer.add_scalar("val/loss", results.loss, step)
    for key, value in metrics.items():
        writer.add_scalar(f"val/{key}", value, step)
    read = image_reader_for(cfg)
    n = int(cfg.evaluator.get("tb_images", 4))
    if read is not None and n > 0 and len(results.fileinfos):
        from utils.vis_helper import heatmap_grid
        picks = _pick_examples(results, n)
        images = [read(results.fileinfos[i]["filename"]) for i in picks]
        writer.add_image("val/heatmaps", heatmap_grid(images, results.preds[picks], n=len(picks)), step)
    writer.flush()


def _pick_examples(results: EvalResults, n: int) -> list:
    """Defective images first (they show what the model finds), then normal ones."""
    defective = [i for i in range(len(results.masks)) if results.masks[i].any()]
    normal = [i for i in range(len(results.masks)) if not results.masks[i].any()]
    return (defective[: (n + 1) // 2] + normal)[:n] if normal else defective[:n]


def _visualize(cfg, results: EvalResults, logger: logging.Logger) -> None:
    read = image_reader_for(cfg)
    if read is None:
        logger.info("no image reader in the config: heat maps skipped")
        return
    from utils.vis_helper import visualize_compound, visualize_single
    for key, fn in (("vis_compound", visualize_compound), ("vis_single", visualize_single)):
        vis_cfg = cfg.evaluator.get(key)
        if vis_cfg:
            save_root = vis_cfg.save_dir
            fn(results.fileinfos, results.preds, results.masks, vis_cfg, read, save_root)
            logger.info("heat maps (%s) written under %s", key, save_root)


def log_summary(logger: logging.Logger, key_metric: str, tracker, seconds: float) -> None:
    best = "n/a" if tracker.best_metric is None else f"{tracker.best_metric:.6f}"
    logger.info("done in %s: best %s = %s at epoch %s", format_eta(seconds), key_metric, best, tracker.best_epoch)
