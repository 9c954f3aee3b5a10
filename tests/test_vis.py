"""Heat-map visualisation: files, panel layout, global/self normalisation, region outlines, TB grid."""
import os

import cv2
import numpy as np
import pytest

from utils.vis_helper import (apply_ad_scoremap, heatmap_grid, normalize, visualize_compound,
                              visualize_single)

GRAY = 100
SIZES = {"good/000.png": (30, 40), "crack/001.png": (30, 40), "crack/002.png": (24, 24)}


def read_image(filename):
    """Fake reader: a flat gray RGB image of the size listed for that file."""
    h, w = SIZES[filename.split("/", 1)[1]]
    return np.full((h, w, 3), GRAY, dtype=np.uint8)


def jet(level):
    """RGB of cv2's JET colour map at uint8 ``level``."""
    return cv2.applyColorMap(np.array([[level]], np.uint8), cv2.COLORMAP_JET)[0, 0, ::-1].astype(int)


def blend(level):
    return (0.5 * GRAY + 0.5 * jet(level)).astype(int)


def load_rgb(path):
    return cv2.imread(path)[..., ::-1].astype(int)


@pytest.fixture()
def case():
    fileinfos = [{"filename": f"bottle/{name}", "clsname": "bottle", "height": h, "width": w}
                 for name, (h, w) in SIZES.items()]
    preds = np.stack([np.full((16, 16), 0.0), np.full((16, 16), 1.0), np.full((16, 16), 0.5)]).astype(np.float32)
    masks = np.zeros((3, 16, 16), dtype=np.uint8)
    masks[1, 2:5, 2:5] = 1                       # one region
    masks[2, 1:4, 1:4] = masks[2, 10:14, 9:13] = 1  # two separate regions
    return fileinfos, preds, masks


def test_compound_files_and_panels(tmp_path, case):
    fileinfos, preds, masks = case
    paths = visualize_compound(fileinfos, preds, masks, {"save_dir": "vis_compound"}, read_image, tmp_path)
    assert paths == [str(tmp_path / "vis_compound" / "bottle" / p) for p in SIZES]
    normal, one_region = load_rgb(paths[0]), load_rgb(paths[1])
    assert normal.shape == (2 * 30, 40, 3)          # [image, global]
    assert one_region.shape == (4 * 30, 40, 3)      # [image, mask, global, self]
    assert (normal[:30] == GRAY).all()
    assert (normal[30 + 15, 5] == blend(0)).all()   # global: min over all preds = 0 -> JET(0)
    mask_panel = one_region[30:60, :, 0]
    assert set(np.unique(mask_panel)) == {0, 255} and mask_panel[7, 7] == 255 and mask_panel[25, 35] == 0
    assert (one_region[60 + 25, 35] == blend(255)).all()  # global max 1 -> JET(255)
    assert (one_region[90 + 25, 35] == blend(0)).all()    # flat map self-normalised -> 0


def test_every_region_is_outlined(tmp_path, case):
    fileinfos, preds, masks = case
    path = visualize_compound(fileinfos, preds, masks, {"save_dir": "v"}, read_image, tmp_path)[2]
    global_panel = load_rgb(path)[48:72]  # third panel of a 24-px-high image
    white = (global_panel == 255).all(axis=2)
    # 16 -> 24 px (x1.5): regions at rows/cols ~[1.5, 6) and rows [15, 21), cols [13.5, 19.5).
    assert white[0:8, 0:8].any() and white[13:23, 12:21].any()
    assert not white[8:13].any()  # nothing drawn between the two regions
    plain = visualize_compound(fileinfos, preds, masks, {"save_dir": "p"}, read_image, tmp_path,
                               draw_contours=False)[2]
    assert not (load_rgb(plain)[48:72] == 255).all(axis=2).any()


def test_without_masks_and_configured_range(tmp_path, case):
    fileinfos, preds, _ = case
    preds = preds * 4  # 0, 4, 2; configured range [1, 2] clips them
    cfg = {"save_dir": "vis", "max_score": 2.0, "min_score": 1.0}
    paths = visualize_compound(fileinfos, preds, None, cfg, read_image, tmp_path)
    images = [load_rgb(p) for p in paths]
    assert [im.shape[0] for im in images] == [60, 60, 48]  # always [image, global]
    assert (images[0][45, 20] == blend(0)).all() and (images[1][45, 20] == blend(255)).all()


def test_single_writes_global_overlay_only(tmp_path, case):
    fileinfos, preds, masks = case
    paths = visualize_single(fileinfos, preds, masks, {"save_dir": "vis_single"}, read_image, tmp_path)
    assert paths[0] == str(tmp_path / "vis_single" / "bottle" / "good" / "000.png")
    assert all(os.path.isfile(p) for p in paths)
    assert load_rgb(paths[1]).shape == (30, 40, 3)
    assert (load_rgb(paths[1])[25, 35] == blend(255)).all()


def test_normalize_and_scoremap_helpers():
    assert normalize(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert normalize(np.array([2.0, 4.0]), 6.0, 2.0).tolist() == [0.0, 0.5]
    assert normalize(np.full((2, 2), 7.0)).tolist() == [[0.0, 0.0], [0.0, 0.0]]  # no division by zero
    image = np.full((2, 2, 3), GRAY, np.uint8)
    out = apply_ad_scoremap(image, np.ones((2, 2)), alpha=0.25)
    assert out.dtype == np.uint8 and (out[0, 0] == (0.25 * GRAY + 0.75 * jet(255)).astype(int)).all()


def test_mismatched_inputs_raise(tmp_path, case):
    fileinfos, preds, masks = case
    with pytest.raises(ValueError, match="must match one to one"):
        visualize_compound(fileinfos[:2], preds, masks, {"save_dir": "v"}, read_image, tmp_path)


@pytest.mark.parametrize("layout", ["bhwc", "bchw", "list"])
def test_heatmap_grid(layout):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 8, 10, 3), dtype=np.uint8)
    preds = rng.random((6, 1, 8, 10)).astype(np.float32)
    given = {"bhwc": images, "bchw": images.transpose(0, 3, 1, 2), "list": list(images)}[layout]
    grid = heatmap_grid(given, preds, n=4)
    assert grid.shape == (3, 16, 40) and grid.dtype == np.uint8
    assert (grid[:, :8, 10:20] == images[1].transpose(2, 0, 1)).all()  # top row: the images
    expected = apply_ad_scoremap(images[1], normalize(preds[1, 0]))
    assert (grid[:, 8:, 10:20] == expected.transpose(2, 0, 1)).all()   # bottom row: the overlays
    with pytest.raises(ValueError, match="uint8"):
        heatmap_grid(images.astype(np.float32), preds)


def test_heatmap_grid_images_of_different_sizes():
    images = [np.full((30, 40, 3), 10, np.uint8), np.full((50, 50, 3), 200, np.uint8)]
    grid = heatmap_grid(images, np.zeros((2, 16, 16), np.float32))
    assert grid.shape == (3, 32, 32)
    assert (grid[:, :16, :16] == 10).all() and (grid[:, :16, 16:] == 200).all()
