"""Unsigned integer keys that sort floats in DESCENDING order.

Why: numpy sorts unsigned integers with SIMD kernels (x86-simd-sort) several times faster than it
argsorts floats, and a float32 key leaves the low 32 bits of a uint64 free to carry a label or a
region id, so one ``np.sort`` orders scores and labels together with no gather afterwards.

IEEE-754 trick: for a non-negative float the bit pattern grows with the value, for a negative one it
shrinks; flipping the value bits of non-negative numbers and keeping negative ones as they are gives
keys whose ascending order is the descending order of the floats.
"""
import numpy as np


def _reject_nan(scores: np.ndarray) -> None:
    if np.isnan(scores).any():
        raise ValueError(
            f"anomaly scores contain {int(np.isnan(scores).sum())} NaN value(s); "
            "the model produced invalid maps: fix the predictions before computing metrics")


def descending_keys32(scores: np.ndarray) -> np.ndarray:
    """float32 array -> uint32 keys, ascending key <=> descending score; equal scores, equal keys.

    NaN is rejected; -0.0 and +0.0 get the same key (sklearn treats them as equal too).
    """
    scores = np.asarray(scores, dtype=np.float32)
    _reject_nan(scores)
    bits = (scores + np.float32(0.0)).view(np.uint32)  # +0.0 turns -0.0 into +0.0
    # sign 0 -> xor 0x7fffffff (flip value bits); sign 1 -> xor 0 (keep): (sign - 1) & mask.
    return bits ^ (((bits >> np.uint32(31)) - np.uint32(1)) & np.uint32(0x7FFFFFFF))


def descending_keys64(scores: np.ndarray) -> np.ndarray:
    """float64 array -> uint64 keys, ascending key <=> descending score (see ``descending_keys32``)."""
    scores = np.asarray(scores, dtype=np.float64)
    _reject_nan(scores)
    bits = (scores + 0.0).view(np.uint64)
    mask = np.uint64(0x7FFFFFFFFFFFFFFF)
    return bits ^ (((bits >> np.uint64(63)) - np.uint64(1)) & mask)


def exact_float32(scores: np.ndarray) -> np.ndarray | None:
    """``scores`` as float32 when that loses nothing (so the fast packed sort is exact), else None."""
    scores = np.asarray(scores)
    if scores.dtype in (np.float32, np.float16) or (scores.dtype.kind in "iub" and scores.itemsize <= 2):
        return scores.astype(np.float32, copy=False)
    as32 = scores.astype(np.float32)
    with np.errstate(invalid="ignore"):
        same = np.array_equal(as32, scores, equal_nan=True)
    return as32 if same else None
