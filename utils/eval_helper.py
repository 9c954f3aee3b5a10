"""Evaluation: exact AUROC (original rules), AP, F1-max and AUPRO per class, and the metrics table.

Public entry points: ``performances`` and ``log_metrics``. The threshold-curve machinery lives in
``utils.metrics``: every pixel-level metric of a class shares ONE sort of that class's pixels.
"""
import logging

import numpy as np
from tabulate import tabulate

from utils.metrics.curves import ThresholdCurve, threshold_curve
from utils.metrics.image_scores import image_scores
from utils.metrics.regions import label_regions, region_weights
from utils.metrics.spec import MetricSpec, parse_metrics_cfg
from utils.metrics.summaries import aupro, auroc, average_precision, f1_max

_LOG = logging.getLogger("uniad.metrics")  # a child of the run logger: warnings reach train.log


def as_map_stack(array, what: str, caller: str = "performances") -> np.ndarray:
    """[N,H,W] (or [N,1,H,W]) array-like -> np.ndarray [N,H,W]; errors name ``caller`` and ``what``."""
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise ValueError(f"{caller}: {what} must be [N,H,W] (or [N,1,H,W]), got shape {array.shape}")
    return array


def _check_inputs(fileinfos, preds, masks, specs) -> None:
    if masks is None:
        if specs:
            raise ValueError(
                f"performances: masks is None but metrics {[s.column for s in specs]} need ground-truth "
                "masks (image label = mask has a defective pixel); pass the test masks, zeros for normal images")
        return
    if masks.shape != preds.shape:
        raise ValueError(f"performances: masks shape {masks.shape} != preds shape {preds.shape}; "
                         "resize the masks (NEAREST) to the score-map resolution")
    if len(fileinfos) != len(preds):
        raise ValueError(f"performances: {len(fileinfos)} fileinfos for {len(preds)} score maps")


def _class_indices(fileinfos) -> dict[str, np.ndarray]:
    """Sorted class name -> indices of its images."""
    names = np.array([info["clsname"] for info in fileinfos])
    if "mean" in set(names.tolist()):
        raise ValueError("performances: a class named 'mean' would collide with the mean_* keys; rename it")
    return {name: np.flatnonzero(names == name) for name in sorted(set(names.tolist()))}


def _summarise(spec: MetricSpec, curve: ThresholdCurve) -> float:
    """The metric ``spec`` on ``curve``; the auc family reports max(AUROC, 1 - AUROC) like the original."""
    if spec.family == "auc":
        value = auroc(curve)
        return 1.0 - value if value < 0.5 else value
    if spec.family == "ap":
        return average_precision(curve)
    if spec.family == "f1max":
        return f1_max(curve)
    return aupro(curve, spec.kwargs["fpr_limit"])


def _warn_undefined(clsname: str, spec: MetricSpec, curve: ThresholdCurve) -> None:
    unit = "pixels" if spec.name == "pixel" else "images"
    _LOG.warning("%s_%s is nan: class %r has %d defective and %d normal %s (both are needed)",
                 clsname, spec.column, clsname, curve.positives, curve.negatives, unit)


def _pixel_curve(preds: np.ndarray, defect: np.ndarray, with_regions: bool) -> ThresholdCurve:
    """The class's single pixel sort; region weights only when AUPRO is requested."""
    if not with_regions:
        return threshold_curve(preds, defect)
    ids, sizes = label_regions(defect)
    return threshold_curve(preds, ids, region_weights(sizes))


def _class_metrics(clsname: str, preds: np.ndarray, defect: np.ndarray, specs) -> dict[str, float]:
    """``{column: value}`` for one class; preds float [n,H,W], defect bool [n,H,W]."""
    labels = defect.reshape(len(defect), -1).any(axis=1)
    curves: dict = {}
    results = {}
    for spec in specs:
        if spec.name == "pixel":
            cache_key = ("pixel",)
            if cache_key not in curves:
                with_regions = any(s.family == "aupro" for s in specs)
                curves[cache_key] = _pixel_curve(preds, defect, with_regions)
        else:
            cache_key = (spec.name, repr(sorted(spec.kwargs.items())))
            if cache_key not in curves:
                curves[cache_key] = threshold_curve(image_scores(spec.name, preds, spec.kwargs), labels)
        value = _summarise(spec, curves[cache_key])
        if np.isnan(value):
            _warn_undefined(clsname, spec, curves[cache_key])
        results[spec.column] = value
    return results


def _class_means(per_class: dict[str, dict], specs) -> dict[str, float]:
    """``mean_{column}``: unweighted mean over classes, skipping (and warning about) nan classes."""
    means = {}
    for spec in specs:
        values = {cls: res[spec.column] for cls, res in per_class.items()}
        skipped = sorted(cls for cls, v in values.items() if np.isnan(v))
        if skipped:
            _LOG.warning("mean_%s skips classes with nan: %s", spec.column, skipped)
        kept = [v for v in values.values() if not np.isnan(v)]
        means[f"mean_{spec.column}"] = float(np.mean(kept)) if kept else float("nan")
    return means


def performances(fileinfos, preds, masks, metrics_cfg) -> dict[str, float]:
    """Every requested metric per class and its class mean.

    Args:
        fileinfos: list of dicts with at least ``clsname`` (one per map).
        preds: float [N,H,W] (or [N,1,H,W]) anomaly maps, any resolution.
        masks: [N,H,W] bool / uint8 / float GT (> 0 = defect), same shape as preds; None allowed only
            when no metric is requested (image labels come from the masks).
        metrics_cfg: ``{family: [{name, kwargs}]}``, families auc | ap | f1max | aupro, names
            mean | std | max (kwargs avgpool_size, default [16,16]) | pixel; aupro: pixel only,
            kwargs fpr_limit (default 0.3).
    Returns:
        ``{clsname}_{name}_{family}`` for each class and ``mean_{name}_{family}``; nan (with a logged
        warning) where a class lacks defective or normal images / pixels.
    """
    specs = parse_metrics_cfg(metrics_cfg)
    preds = as_map_stack(preds, "preds")
    masks = None if masks is None else as_map_stack(masks, "masks")
    _check_inputs(fileinfos, preds, masks, specs)
    if not specs:
        return {}
    per_class = {}
    for clsname, index in _class_indices(fileinfos).items():
        per_class[clsname] = _class_metrics(clsname, preds[index], masks[index] > 0, specs)
    metrics = {f"{cls}_{col}": v for cls, res in per_class.items() for col, v in res.items()}
    metrics.update(_class_means(per_class, specs))
    return metrics


def _classes_in(metrics: dict, columns: list[str]) -> list[str]:
    """Class names found in ``metrics`` keys ``{clsname}_{column}`` (the mean row excluded), sorted."""
    found = {key[:-len(col) - 1] for key in metrics for col in columns if key.endswith("_" + col)}
    return sorted(found - {"mean", ""})


def log_metrics(metrics: dict, metrics_cfg, logger: logging.Logger | None = None) -> str:
    """Log (INFO) and return the pipe table: one row per class (sorted), a final ``mean`` row,
    columns ``{name}_{family}`` in config order. Missing values show as nan."""
    columns = [spec.column for spec in parse_metrics_cfg(metrics_cfg)]
    if not columns:
        return ""
    rows = [[cls] + [metrics.get(f"{cls}_{col}", float("nan")) for col in columns]
            for cls in _classes_in(metrics, columns) + ["mean"]]
    table = tabulate(rows, headers=["clsname"] + columns, tablefmt="pipe",
                     numalign="center", stralign="center")
    (logger or _LOG).info("\n%s", table)
    return table
