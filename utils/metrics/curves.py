"""One sort per score set -> cumulative counts at every distinct threshold (no threshold loop).

A threshold t predicts "defective" for every score >= t. Walking the scores from the highest down,
the counts at the last position of each run of equal scores are the counts at that threshold, so
cumulative sums read at those positions give the whole ROC / PR / PRO curve at once, with ties
grouped exactly as sklearn's ``_binary_clf_curve`` groups them.
"""
import sys
from dataclasses import dataclass

import numpy as np

from utils.metrics.sort_keys import descending_keys32, descending_keys64, exact_float32

# Position of the high (score) and low (id) 32-bit halves of a uint64 in memory.
_HI, _LO = (1, 0) if sys.byteorder == "little" else (0, 1)


@dataclass(frozen=True)
class ThresholdCurve:
    """Counts at the corner thresholds, highest threshold first.

    Corner thresholds: every distinct score whose run of ties holds a positive, the distinct score
    just above each of those, and the lowest score. Every other threshold only adds negatives at a
    constant TP (a horizontal stretch of the ROC and PRO curves, zero precision weight in AP, a lower
    F1 than the corner before it), so dropping it changes none of the four metrics, not even the
    interpolation at an FPR limit, and the arrays shrink from ~#pixels to ~2 x #defective pixels.

    tps: int64 [K], positives with score >= threshold; fps: int64 [K], negatives likewise;
    overlap: float64 [K] or None, sum over GT regions of hits_r / size_r (PRO = overlap / n_regions);
    n_regions: number of GT regions (0 when ``overlap`` is None).
    """

    tps: np.ndarray
    fps: np.ndarray
    overlap: np.ndarray | None = None
    n_regions: int = 0

    @property
    def positives(self) -> int:
        return int(self.tps[-1]) if len(self.tps) else 0

    @property
    def negatives(self) -> int:
        return int(self.fps[-1]) if len(self.fps) else 0


def _corners(tps: np.ndarray) -> np.ndarray:
    """bool [K]: runs that gain a positive, the run before each, and the last run."""
    gains = np.empty(len(tps), dtype=bool)
    gains[0] = tps[0] > 0
    np.greater(tps[1:], tps[:-1], out=gains[1:])
    keep = gains.copy()
    keep[:-1] |= gains[1:]
    keep[-1] = True
    return keep


def _from_sorted(keys: np.ndarray, ids: np.ndarray, weights: np.ndarray | None) -> ThresholdCurve:
    """Curve from score keys sorted ascending (= scores descending) and their ids (0 = negative)."""
    n = len(keys)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return ThresholdCurve(empty, empty, None if weights is None else empty.astype(np.float64))
    run_end = np.empty(n, dtype=bool)  # True at the last index of each run of tied scores
    np.not_equal(keys[1:], keys[:-1], out=run_end[:-1])
    run_end[-1] = True
    ends = np.flatnonzero(run_end)
    positive = ids != 0
    count_dtype = np.int32 if n < 2**31 else np.int64  # int32 halves the memory traffic
    tps = np.cumsum(positive, dtype=count_dtype)[ends]
    keep = _corners(tps)
    tps, above = tps[keep].astype(np.int64), ends[keep] + 1
    if weights is None:
        return ThresholdCurve(tps, above - tps)
    # Overlap only grows at positives: cumulate 1/size_r over the positives in score order and read
    # it after the first tps[k] of them.
    hit_weights = weights[ids[np.flatnonzero(positive)]]
    overlap = np.concatenate(([0.0], np.cumsum(hit_weights)))[tps]
    return ThresholdCurve(tps, above - tps, overlap, len(weights) - 1)


def _packed_sort(scores32: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort (score, id) pairs as single uint64 words: score key high, id low. Returns strided views."""
    packed = np.empty(scores32.size, dtype=np.uint64)
    halves = packed.view(np.uint32).reshape(-1, 2)
    halves[:, _HI] = descending_keys32(scores32.ravel())
    halves[:, _LO] = ids.ravel()
    packed.sort()  # in place: no second 8-byte-per-pixel buffer
    halves = packed.view(np.uint32).reshape(-1, 2)
    return halves[:, _HI], halves[:, _LO]


def threshold_curve(scores: np.ndarray, ids: np.ndarray, weights: np.ndarray | None = None
                    ) -> ThresholdCurve:
    """Exact curve of ``scores`` against ``ids`` (any equal shapes).

    Args:
        scores: float array (NaN rejected). Exactly-float32 values take the packed uint64 sort;
            other values (float64 not representable in float32) an argsort of 64-bit keys.
        ids: integer array, 0 = negative, > 0 = positive; with ``weights`` it is the GT region id.
        weights: float64 [R+1] per-id weight (``regions.region_weights``), or None (no PRO).
    """
    if scores.shape != ids.shape:
        raise ValueError(f"scores shape {scores.shape} != labels/regions shape {ids.shape}")
    ids = ids.astype(np.uint32, copy=False)
    scores32 = exact_float32(scores)
    if scores32 is not None:
        keys, sorted_ids = _packed_sort(scores32, ids)
        return _from_sorted(keys, sorted_ids, weights)
    keys = descending_keys64(scores.ravel())
    order = np.argsort(keys)  # tie order is irrelevant: ties are grouped by _from_sorted
    return _from_sorted(keys[order], ids.ravel()[order], weights)
