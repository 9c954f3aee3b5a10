"""Exact threshold curves with no threshold loop: one sorting pass over a class's pixels.

A threshold t predicts "defective" for every score >= t. The four metrics only need the curve at
its corners: for each distinct score v held by a positive (highest first), the point just above v
(A: positives > v, negatives > v) and the point at v (B: positives >= v, negatives >= v), then
(#negatives, #positives). Thresholds between corners only add negatives at constant TP: straight
horizontal stretches of the ROC and PRO curves, zero weight in AP, lower F1 than the corner before;
so they change none of the metrics, not even the interpolation at an FPR limit.

Hence the split: the positives (a few % of the pixels) are sorted with their region ids, the
negatives are sorted alone (SIMD integer sort), and two binary searches count the negatives above
each positive score. Ties are grouped exactly as sklearn's ``_binary_clf_curve`` groups them.
"""
import sys
from dataclasses import dataclass

import numpy as np

from utils.metrics.sort_keys import descending_keys32, descending_keys64, exact_float32

# Position of the high (score key) and low (id) 32-bit halves of a uint64 in memory.
_HI, _LO = (1, 0) if sys.byteorder == "little" else (0, 1)


@dataclass(frozen=True)
class ThresholdCurve:
    """Corner points of the curve (see module docstring), in order of decreasing threshold.

    tps: int64 [K], positives above the threshold; fps: int64 [K], negatives likewise; the last
    point is (all positives, all negatives). overlap: float64 [K] or None, sum over GT regions of
    hits_r / size_r (PRO = overlap / n_regions); n_regions: number of GT regions (0 without overlap).
    Points may repeat (zero-length segments), which no metric notices.
    """

    tps: np.ndarray
    fps: np.ndarray
    overlap: np.ndarray | None = None
    n_regions: int = 0

    @property
    def positives(self) -> int:
        return int(self.tps[-1])

    @property
    def negatives(self) -> int:
        return int(self.fps[-1])


def score_keys(scores: np.ndarray) -> np.ndarray:
    """Flat integer keys, ascending <=> descending score: uint32 when the scores are exactly float32
    (the fast path), uint64 otherwise. NaN is rejected."""
    scores32 = exact_float32(scores)
    if scores32 is not None:
        return descending_keys32(scores32.ravel())
    return descending_keys64(np.asarray(scores, dtype=np.float64).ravel())


def _sort_pairs(keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, ids) sorted by key. uint32 keys travel with their id in one uint64 word (no gather)."""
    if keys.dtype == np.uint64:
        order = np.argsort(keys)  # tie order is irrelevant: ties are grouped afterwards
        return keys[order], ids[order]
    packed = np.empty(len(keys), dtype=np.uint64)
    halves = packed.view(np.uint32).reshape(-1, 2)
    halves[:, _HI], halves[:, _LO] = keys, ids
    packed.sort()
    halves = packed.view(np.uint32).reshape(-1, 2)
    return halves[:, _HI], halves[:, _LO]


def _run_ends(sorted_keys: np.ndarray) -> np.ndarray:
    """Index of the last element of each run of equal keys."""
    run_end = np.empty(len(sorted_keys), dtype=bool)
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=run_end[:-1])
    run_end[-1:] = True
    return np.flatnonzero(run_end)


def _interleave(above: np.ndarray, at: np.ndarray, last) -> np.ndarray:
    """[above_0, at_0, above_1, at_1, ..., last]."""
    return np.append(np.column_stack((above, at)).ravel(), last)


def threshold_curve(scores: np.ndarray, ids: np.ndarray, weights: np.ndarray | None = None
                    ) -> ThresholdCurve:
    """Exact corner curve of ``scores`` against ``ids`` (any equal shapes).

    Args:
        scores: float array (NaN rejected).
        ids: integer array, 0 = negative, > 0 = positive; with ``weights`` it is the GT region id.
        weights: float64 [R+1] per-id weight (``regions.region_weights``), or None (no PRO).
    """
    if scores.shape != ids.shape:
        raise ValueError(f"scores shape {scores.shape} != labels/regions shape {ids.shape}")
    keys, ids = score_keys(scores), ids.ravel().astype(np.uint32, copy=False)
    positive = ids != 0
    negative_keys = np.sort(keys[~positive])
    positive_keys, positive_ids = _sort_pairs(keys[positive], ids[positive])
    n_pos, n_neg = len(positive_keys), len(negative_keys)
    ends = _run_ends(positive_keys)
    run_keys = positive_keys[ends]
    tps_at = ends + 1
    tps_above = np.concatenate(([0], tps_at))[:-1]
    fps_at = np.searchsorted(negative_keys, run_keys, side="right")    # negatives with score >= v
    fps_above = np.searchsorted(negative_keys, run_keys, side="left")  # negatives with score > v
    tps = _interleave(tps_above, tps_at, n_pos).astype(np.int64)
    fps = _interleave(fps_above, fps_at, n_neg).astype(np.int64)
    if weights is None:
        return ThresholdCurve(tps, fps)
    cumulative = np.concatenate(([0.0], np.cumsum(weights[positive_ids])))  # overlap after k hits
    return ThresholdCurve(tps, fps, cumulative[tps], len(weights) - 1)
