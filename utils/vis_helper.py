"""Heat-map visualisation (original ``vis_compound`` / ``vis_single`` behaviour) and a TensorBoard grid.

Per image (original resolution, read through the caller's ``read_image``):
- global overlay: the map clipped to [min_score, max_score] (config values, or when null/0 the
  min/max over ALL maps given) and scaled to [0, 1];
- self overlay: the map min-max normalised on its own (for analysis);
- overlay = 0.5 * image + 0.5 * JET colour map, cv2, RGB.
Compound images stack [image, mask, global, self] vertically when the mask has a defect, else
[image, global]. Saved to ``<save_root>/<save_dir>/<clsname>/<defect dir>/<file name>``.
Unlike the original, the outline of every GT region is drawn on the overlays (several regions stay
distinguishable) and ``masks=None`` is supported.
"""
import os

import cv2
import numpy as np

CONTOUR_RGB = (255, 255, 255)


def normalize(pred: np.ndarray, max_value: float | None = None, min_value: float | None = None) -> np.ndarray:
    """(pred - min) / (max - min) as float64; own min/max when not given; zeros for a flat map."""
    pred = np.asarray(pred, dtype=np.float64)
    low = pred.min() if min_value is None else float(min_value)
    high = pred.max() if max_value is None else float(max_value)
    if high <= low:
        return np.zeros_like(pred)
    return (pred - low) / (high - low)


def apply_ad_scoremap(image: np.ndarray, scoremap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 RGB [H,W,3] = alpha * image + (1 - alpha) * JET(uint8(scoremap * 255)); scoremap [H,W] in [0,1]."""
    scoremap = np.asarray(scoremap, dtype=np.float64)
    if scoremap.ndim == 3:
        scoremap = scoremap[..., 0]  # the original passes 3 identical channels
    levels = (np.clip(scoremap, 0.0, 1.0) * 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return (alpha * np.asarray(image, dtype=np.float64) + (1 - alpha) * colours).astype(np.uint8)


def global_range(preds: np.ndarray, cfg_vis) -> tuple[float, float]:
    """(min_score, max_score): the config's, or (when null or 0, as in the original) over all preds."""
    max_score = cfg_vis.get("max_score", None) or float(np.max(preds))
    min_score = cfg_vis.get("min_score", None) or float(np.min(preds))
    return float(min_score), float(max_score)


def save_path(save_root, save_dir: str, fileinfo: dict) -> str:
    """``<save_root>/<save_dir>/<clsname>/<defect dir>/<file name>`` (an absolute save_dir wins)."""
    defect_dir = os.path.basename(os.path.dirname(fileinfo["filename"]))
    name = os.path.basename(fileinfo["filename"])
    return os.path.join(str(save_root or ""), save_dir, fileinfo["clsname"], defect_dir, name)


def _resize(array: np.ndarray, size_hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(array, (size_hw[1], size_hw[0]), interpolation=interpolation)


def _mask_at(mask, size_hw) -> np.ndarray | None:
    """GT mask -> uint8 {0,255} [H,W] at the image size (NEAREST), or None without masks."""
    if mask is None:
        return None
    return _resize((np.asarray(mask) > 0).astype(np.uint8) * 255, size_hw, nearest=True)


def _outline(overlay: np.ndarray, mask255: np.ndarray | None) -> np.ndarray:
    """Draw the outline of every connected GT region onto ``overlay`` (in place) and return it."""
    if mask255 is not None and mask255.any():
        contours, _ = cv2.findContours(mask255, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        thickness = max(1, round(min(mask255.shape) / 224))
        cv2.drawContours(overlay, contours, -1, CONTOUR_RGB, thickness)
    return overlay


def _overlays(image, pred, mask255, value_range, draw_contours):
    """(global overlay, self overlay), uint8 RGB at the image size."""
    pred = _resize(np.asarray(pred, dtype=np.float32), image.shape[:2])
    low, high = value_range
    global_map = normalize(np.clip(pred, low, high), high, low)
    outline = mask255 if draw_contours else None
    return (_outline(apply_ad_scoremap(image, global_map), outline),
            _outline(apply_ad_scoremap(image, normalize(pred)), outline))


def _write(path: str, rgb: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cv2.imwrite could not write {path}: check the extension and the folder's permissions")
    return path


def _check(fileinfos, preds, masks) -> np.ndarray:
    preds = np.asarray(preds)
    preds = preds[:, 0] if preds.ndim == 4 else preds
    if len(preds) != len(fileinfos) or (masks is not None and len(masks) != len(preds)):
        raise ValueError(f"visualize: {len(fileinfos)} fileinfos, {len(preds)} preds and "
                         f"{'no' if masks is None else len(masks)} masks must match one to one")
    return preds


def visualize_compound(fileinfos, preds, masks, cfg_vis, read_image, save_root=None,
                       draw_contours: bool = True) -> list[str]:
    """Write one compound image per map; returns the written paths.

    Args:
        fileinfos: dicts with ``filename`` (relative, ``.../<defect dir>/<name>``) and ``clsname``
            (``height``/``width`` are not needed: the image read gives the size).
        preds: [N,h,w] (or [N,1,h,w]) float maps; masks: [N,h,w] GT (> 0 = defect) or None.
        cfg_vis: ``save_dir``, ``max_score``, ``min_score`` (null/0 = over all preds).
        read_image: ``filename -> uint8 RGB [H,W,3]`` at the original resolution.
        save_root: folder that a relative ``save_dir`` is joined to.
    """
    def compound(image, mask255, global_overlay, self_overlay):
        if mask255 is not None and mask255.any():
            return np.vstack([image, np.repeat(mask255[..., None], 3, axis=2), global_overlay, self_overlay])
        return np.vstack([image, global_overlay])

    return _render_all(fileinfos, preds, masks, cfg_vis, read_image, save_root, draw_contours, compound)


def visualize_single(fileinfos, preds, masks, cfg_vis, read_image, save_root=None,
                     draw_contours: bool = True) -> list[str]:
    """Write only the globally normalised overlay per map (same arguments and paths as compound)."""
    return _render_all(fileinfos, preds, masks, cfg_vis, read_image, save_root, draw_contours,
                       lambda image, mask255, global_overlay, self_overlay: global_overlay)


def _render_all(fileinfos, preds, masks, cfg_vis, read_image, save_root, draw_contours, compose) -> list[str]:
    """Read each image, build its overlays, ``compose(image, mask255, global, self)`` -> the picture to save."""
    preds = _check(fileinfos, preds, masks)
    value_range = global_range(preds, cfg_vis)
    paths = []
    for i, info in enumerate(fileinfos):
        image = read_image(info["filename"])
        mask255 = _mask_at(None if masks is None else masks[i], image.shape[:2])
        global_overlay, self_overlay = _overlays(image, preds[i], mask255, value_range, draw_contours)
        picture = compose(image, mask255, global_overlay, self_overlay)
        paths.append(_write(save_path(save_root, cfg_vis["save_dir"], info), picture))
    return paths


def _as_rgb_list(images) -> list[np.ndarray]:
    """uint8 RGB images as a list of [H,W,3]: from a list (any sizes), [B,H,W,3] or [B,3,H,W]."""
    if not isinstance(images, (list, tuple)):
        images = np.asarray(images)
        if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
            images = images.transpose(0, 2, 3, 1)
    images = [np.asarray(image) for image in images]
    for image in images:
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"heatmap_grid: images must be uint8 [H,W,3], got {image.dtype} {image.shape}")
    return images


def heatmap_grid(images_uint8, preds, n: int = 4) -> np.ndarray:
    """CHW uint8 grid for TensorBoard: top row the first ``n`` images, bottom row their self-normalised
    overlays, every tile at the maps' resolution.

    images_uint8: uint8 RGB, a list of [H,W,3] (sizes may differ), [B,H,W,3] or [B,3,H,W];
    preds: [B,h,w] or [B,1,h,w] anomaly maps. Returns [3, 2h, min(n,B)*w].
    """
    images = _as_rgb_list(images_uint8)
    preds = np.asarray(preds, dtype=np.float32)
    preds = preds[:, 0] if preds.ndim == 4 else preds
    count = min(n, len(images), len(preds))
    tiles = [cv2.resize(images[i], (preds.shape[2], preds.shape[1]), interpolation=cv2.INTER_AREA)
             for i in range(count)]
    overlays = [apply_ad_scoremap(tiles[i], normalize(preds[i])) for i in range(count)]
    grid = np.vstack([np.hstack(tiles), np.hstack(overlays)])
    return np.ascontiguousarray(grid.transpose(2, 0, 1))
