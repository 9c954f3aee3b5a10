"""Per-image anomaly scores of the original evaluator: ``mean``, ``std`` (ddof 0), ``max`` (avg-pooled).

Computed in float64 (the exact values of the definitions; the original's float32 reductions can
differ in the last bits, which never reorders images outside exact ties).
"""
import numpy as np

# Images per chunk of the box filter: bounds the float64 work buffers (~64*225*225*8 B = 26 MB).
_CHUNK = 64


def _box_means_max(maps: np.ndarray, kernel: tuple[int, int]) -> np.ndarray:
    """max over windows of mean(map[window]), window kernel=(kh,kw), stride 1, no padding.

    Equals ``F.avg_pool2d(maps[:,None], kernel, stride=1).amax((1,2,3))``; separable running sums
    cost O(H*W) per image instead of O(H*W*kh*kw) (avg_pool2d on CPU sums each window).
    """
    kh, kw = kernel
    out = np.empty(len(maps), dtype=np.float64)
    for start in range(0, len(maps), _CHUNK):
        chunk = maps[start:start + _CHUNK].astype(np.float64)
        rows = np.cumsum(np.pad(chunk, ((0, 0), (1, 0), (0, 0))), axis=1)
        rows = rows[:, kh:] - rows[:, :-kh]                       # [n, H-kh+1, W]
        cols = np.cumsum(np.pad(rows, ((0, 0), (0, 0), (1, 0))), axis=2)
        windows = cols[:, :, kw:] - cols[:, :, :-kw]              # [n, H-kh+1, W-kw+1]
        out[start:start + len(chunk)] = windows.reshape(len(chunk), -1).max(axis=1)
    return out / (kh * kw)


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
