"""Ground-truth regions for AUPRO: connected components of each image's mask, 8-connectivity."""
import numpy as np
from scipy import ndimage

# 3x3 in-plane neighbourhood (8-connectivity) and no link across images: labelling the whole
# [N,H,W] stack in one call gives every region of every image its own id, N times faster than a
# Python loop of 2-D calls.
_PLANAR_8 = np.zeros((3, 3, 3), dtype=bool)
_PLANAR_8[1] = True


def label_regions(defect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of every image of a stack.

    Args:
        defect: bool [N,H,W], True = defective pixel.
    Returns:
        (region_ids uint32 [N,H,W]: 0 outside any region, 1..R inside (unique over the stack),
         sizes int64 [R+1]: pixel count of each region id; sizes[0] is 0, not the normal pixels).
    """
    if defect.ndim != 3:
        raise ValueError(f"label_regions expects a bool [N,H,W] stack, got shape {defect.shape}")
    ids = np.zeros(defect.shape, dtype=np.uint32)
    with_defect = np.flatnonzero(defect.reshape(len(defect), -1).any(axis=1))
    labelled, count = ndimage.label(defect[with_defect], structure=_PLANAR_8)  # normal images: no regions
    ids[with_defect] = labelled
    sizes = np.bincount(labelled[labelled > 0], minlength=count + 1)
    return ids, sizes


def region_weights(sizes: np.ndarray) -> np.ndarray:
    """float64 [R+1]: 1/size for each region id, 0 for id 0 (normal pixels carry no overlap)."""
    weights = np.zeros(len(sizes), dtype=np.float64)
    weights[1:] = 1.0 / sizes[1:]
    return weights
