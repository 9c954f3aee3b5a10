"""Decision thresholds chosen on the validation set, for inference (``tools/infer.py``).

After each validation, rank 0 calls :func:`compute_thresholds`. For every class and for all classes
together it picks:

* ``image``: the image-score threshold that maximises image-level F1 (label = the GT mask has a
  defective pixel, as in the metrics); the score is the config's image-level post-processing
  (:func:`image_score_spec`, ``max`` of the 16x16 average-pooled map by default);
* ``pixel``: the anomaly-map value that maximises pixel-level F1 over every pixel of the maps;
* ``score_range``: min / max over the maps, the fixed range that colours overlays the same way
  for every image (the original's global normalisation).

Rule: an image (pixel) is anomalous when its score is ``>= threshold``. The search is exact over
every distinct score: one sort (``utils.metrics.curves.threshold_curve``, the metrics' machinery)
gives the true / false positive counts at every corner of the curve, and F1 = 2 TP / (TP + FP + P)
is evaluated at all of them; among equal F1 values the highest threshold wins. The threshold
reported lies halfway between the lowest score still flagged (a defective sample's) and the next
lower score, so float round-off of a recomputed score cannot flip a decision at the boundary.

Pixel sets larger than ``max_pixels`` (on MVTec-AD only the all-classes set: 1725 maps of 224x224 =
86.6 M pixels) are subsampled deterministically, every k-th pixel in flat order, k the smallest
stride that fits; the result records ``stride`` (1 = exact).

The returned dict holds plain types only (it goes into the checkpoint and ``thresholds.json``)::

    {"version": 1, "rule": "anomalous if score >= threshold",
     "image_score": {"name": "max", "kwargs": {"avgpool_size": [16, 16]}}, "map_size": [H, W],
     "global":  {"image": BEST, "pixel": BEST, "score_range": {"min": m, "max": M}, "images": n},
     "classes": {clsname: same as global}}

with BEST = ``{"threshold", "f1", "positives", "negatives", "stride"}`` or None when no defective
sample exists (no threshold can be chosen).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Mapping, Optional

import numpy as np

from utils.eval_helper import as_map_stack
from utils.metrics.curves import threshold_curve
from utils.metrics.image_scores import image_scores
from utils.metrics.spec import IMAGE_NAMES

THRESHOLDS_VERSION = 1
RULE = "anomalous if score >= threshold"
DEFAULT_SCORE = ("max", {"avgpool_size": [16, 16]})
DEFAULT_MAX_PIXELS = 1 << 24  # 16.8 M pixels: about 1 s to sort on 2 cores


# --------------------------------------------------------------------------- the image score
def image_score_spec(evaluator_cfg: Optional[Mapping]) -> tuple[str, dict]:
    """(name, kwargs) of the image-level score that inference reports and thresholds.

    The one the config evaluates detection with: the key metric's name when it is image-level
    (``mean_mean_auc`` on CIFAR-10 -> ``mean``); else the ``auc`` entry named ``max`` (the paper's
    detection score, MVTec-AD); else the first image-level ``auc`` entry; else ``max`` 16x16.
    """
    evaluator_cfg = evaluator_cfg or {}
    entries = [dict(e) for e in (evaluator_cfg.get("metrics") or {}).get("auc") or []]
    image_entries = [e for e in entries if e.get("name") in IMAGE_NAMES]
    key_name = _key_metric_name(evaluator_cfg.get("key_metric"))
    for wanted in (key_name, "max"):
        for entry in image_entries:
            if entry["name"] == wanted:
                return _spec(entry)
    if image_entries:
        return _spec(image_entries[0])
    return DEFAULT_SCORE[0], dict(DEFAULT_SCORE[1])


def _key_metric_name(key_metric: Optional[str]) -> Optional[str]:
    """``mean_max_auc`` -> ``max``; None when not a class-mean auc key."""
    parts = str(key_metric or "").split("_")
    return parts[1] if len(parts) == 3 and parts[0] == "mean" and parts[2] == "auc" else None


def _spec(entry: dict) -> tuple[str, dict]:
    kwargs = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in (entry.get("kwargs") or {}).items()}
    if entry["name"] == "max":
        kwargs.setdefault("avgpool_size", list(DEFAULT_SCORE[1]["avgpool_size"]))
    return entry["name"], kwargs


# ------------------------------------------------------------------------ F1-optimal threshold
def best_f1_threshold(scores: np.ndarray, labels: np.ndarray, max_samples: Optional[int] = None
                      ) -> Optional[dict]:
    """The F1-maximising threshold of ``scores`` against ``labels`` (any equal shapes, > 0 = positive).

    Returns ``{"threshold", "f1", "positives", "negatives", "stride"}`` (plain types) or None when
    there is no positive. ``max_samples``: subsample every k-th element (flat order) beyond it.
    """
    scores, labels = np.asarray(scores).ravel(), np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"best_f1_threshold: {scores.size} scores for {labels.size} labels")
    stride = 1 if not max_samples or scores.size <= max_samples else math.ceil(scores.size / max_samples)
    scores, positive = scores[::stride], labels[::stride] > 0
    if not positive.any():
        return None
    curve = threshold_curve(scores, positive.astype(np.uint8))
    # Curve points: [above_0, at_0, above_1, at_1, ..., all]; "at_i" flags every score >= v_i, the
    # i-th distinct positive score from the top. F1 peaks at one of them: the other points add
    # negatives at equal TP. argmax takes the first maximum, i.e. the highest threshold.
    tps, fps = curve.tps[1::2], curve.fps[1::2]
    distinct = np.unique(scores[positive])[::-1]  # the same runs as the curve (equal floats, +-0 merged)
    if len(distinct) != len(tps):
        raise RuntimeError(f"best_f1_threshold: {len(distinct)} distinct positive scores but {len(tps)} curve runs")
    f1 = 2.0 * tps / (tps + fps + curve.positives)
    best = int(np.argmax(f1))
    return {"threshold": _midpoint_below(scores, float(distinct[best])), "f1": float(f1[best]),
            "positives": curve.positives, "negatives": curve.negatives, "stride": int(stride)}


def _midpoint_below(scores: np.ndarray, value: float) -> float:
    """Halfway between ``value`` and the next lower score (``value`` itself when none is lower).

    The same samples pass ``>=`` either way, but a score recomputed with other float round-off
    (another batch size, ONNX) does not flip at the boundary.
    """
    lower = scores[scores < value]
    if not lower.size:
        return value
    below = float(lower.max())
    middle = (value + below) / 2.0
    return middle if below < middle < value else value  # adjacent floats: no room in between


# ----------------------------------------------------------------------------- all thresholds
def _group(preds: np.ndarray, defect: np.ndarray, scores: np.ndarray, max_pixels: Optional[int]) -> dict:
    """Thresholds of one set of maps (a class, or all of them)."""
    labels = defect.reshape(len(defect), -1).any(axis=1)
    return {"image": best_f1_threshold(scores, labels),
            "pixel": best_f1_threshold(preds, defect, max_pixels),
            "score_range": {"min": float(preds.min()), "max": float(preds.max())},
            "images": int(len(preds))}


def compute_thresholds(fileinfos, preds, masks, evaluator_cfg, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS
                       ) -> dict:
    """Per-class and global thresholds from a validation's maps (see the module docstring).

    Args:
        fileinfos: one dict per map with ``clsname``.
        preds: float [N,H,W] (or [N,1,H,W]) anomaly maps; masks: same shape, > 0 = defect.
        evaluator_cfg: the config's ``evaluator`` section (picks the image score).
        max_pixels: pixel sets above this size are subsampled (None: always exact).
    """
    preds = as_map_stack(preds, "preds", "compute_thresholds")
    masks = as_map_stack(masks, "masks", "compute_thresholds")
    if preds.shape != masks.shape or len(fileinfos) != len(preds) or not len(preds):
        raise ValueError(f"compute_thresholds: {len(fileinfos)} fileinfos, preds {preds.shape} and masks "
                         f"{masks.shape} must be non-empty and match")
    name, kwargs = image_score_spec(evaluator_cfg)
    scores = image_scores(name, preds, kwargs)
    defect = masks > 0
    classes = np.array([str(info["clsname"]) for info in fileinfos])
    per_class = {}
    for clsname in sorted(set(classes.tolist())):
        index = np.flatnonzero(classes == clsname)
        if len(index) == len(preds):  # one class (e.g. CIFAR-10): no copy of every map
            index = slice(None)
        per_class[clsname] = _group(preds[index], defect[index], scores[index], max_pixels)
    overall = dict(next(iter(per_class.values()))) if len(per_class) == 1 else _group(preds, defect, scores, max_pixels)
    return {"version": THRESHOLDS_VERSION, "rule": RULE, "image_score": {"name": name, "kwargs": kwargs},
            "map_size": [int(preds.shape[1]), int(preds.shape[2])], "global": overall, "classes": per_class}


# ------------------------------------------------------------------------------ lookup and I/O
def select_threshold(thresholds: Optional[Mapping], clsname: Optional[str], level: str = "image"
                     ) -> tuple[Optional[float], str]:
    """(threshold, source) for ``level`` in image | pixel: the class's when known, else the global one.

    source is ``class:<name>``, ``global`` or ``none`` (no thresholds, or none could be chosen).
    """
    if not thresholds:
        return None, "none"
    entry = ((thresholds.get("classes") or {}).get(clsname) or {}).get(level) if clsname else None
    if entry:
        return float(entry["threshold"]), f"class:{clsname}"
    entry = (thresholds.get("global") or {}).get(level)
    return (float(entry["threshold"]), "global") if entry else (None, "none")


def save_thresholds_json(thresholds: Mapping, path: str) -> None:
    """Write ``thresholds`` as indented JSON, atomically (temporary file in the folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(thresholds, handle, indent=2, allow_nan=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)  # then re-raise: the caller must see the failure
        raise


def load_thresholds_json(path: str) -> dict:
    """Read a ``thresholds.json``; errors name the file and what it lacks."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"thresholds file not found: {path} (train_val.py writes "
                                "checkpoints/thresholds.json after each validation)")
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc})") from exc
    check_thresholds(data, path)
    return data


def check_thresholds(data: Any, where: str) -> None:
    """Raise ValueError unless ``data`` looks like :func:`compute_thresholds`' output."""
    keys = ("version", "image_score", "global", "classes")
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{where} is not a thresholds record: it lacks {missing}")
    if data["version"] != THRESHOLDS_VERSION:
        raise ValueError(f"{where}: thresholds version {data['version']} is not {THRESHOLDS_VERSION}")
