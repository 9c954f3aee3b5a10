"""Per-image anomaly scores of the original evaluator: ``mean``, ``std`` (ddof 0), ``max`` (avg-pooled).

Computed in float64 (the exact values of the definitions; the original's float32 reductions can
differ in the last bits, which never reorders images outside exact ties).
"""
import cv2
import numpy as np


def _cv_input(score_map: np.ndarray) -> np.ndarray:
    """A map cv2 filters without loss: float64 as is, anything else as contiguous float32."""
    dtype = np.float64 if score_map.dtype == np.float64 else np.float32
    return np.ascontiguousarray(score_map, dtype=dtype)


def _box_means_max(maps: np.ndarray, kernel: tuple[int, int]) -> np.ndarray:
    """max over windows of mean(map[window]), window kernel=(kh,kw), stride 1, no padding.

    Equals ``F.avg_pool2d(maps[:,None], kernel, stride=1).amax((1,2,3))`` up to float32 round-off
    (that op accumulates in float32). cv2's box filter keeps running sums in float64 (CV_64F):
    O(H*W) per image, where avg_pool2d on CPU sums every window (~70x slower here).
    """
    kh, kw = kernel
    rows, cols = maps.shape[1] - kh + 1, maps.shape[2] - kw + 1
    out = np.empty(len(maps), dtype=np.float64)
    for i, score_map in enumerate(maps):
        means = cv2.boxFilter(_cv_input(score_map), cv2.CV_64F, (kw, kh), normalize=True,
                              borderType=cv2.BORDER_CONSTANT)
        # Anchor at the window centre (k // 2): the windows lying wholly inside start there.
        out[i] = means[kh // 2:kh // 2 + rows, kw // 2:kw // 2 + cols].max()
    return out


def pool_size(kwargs: dict) -> tuple[int, int]:
    """``avgpool_size`` kwarg (int or [h, w], default [16, 16]) as a (h, w) tuple."""
    size = kwargs.get("avgpool_size", [16, 16])
    size = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"evaluator.metrics max kwargs.avgpool_size={size!r}: expected a positive int or [h, w]")
    return size


def image_scores(name: str, maps: np.ndarray, kwargs: dict) -> np.ndarray:
    """float64 [N] scores of maps [N,H,W] for image-level method ``name`` (mean | std | max)."""
    flat = maps.reshape(len(maps), -1)
    if name == "mean":
        return flat.mean(axis=1, dtype=np.float64)
    if name == "std":
        return flat.astype(np.float64).std(axis=1)
    if name == "max":
        kernel = pool_size(kwargs)
        if kernel[0] > maps.shape[1] or kernel[1] > maps.shape[2]:
            raise ValueError(f"evaluator.metrics max kwargs.avgpool_size={list(kernel)} is larger than "
                             f"the score maps ({maps.shape[1]}x{maps.shape[2]}): use a smaller window")
        return _box_means_max(maps, kernel)
    raise ValueError(f"unknown image-level method {name!r}: expected mean, std or max")
