"""The embedded demo dataset: determinism, layout and meta format, exact masks, raw-pixel baseline."""
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from torchvision.transforms import Normalize

from datasets.custom_dataset import CustomDataset
from datasets.defects import DEFECTS
from datasets.demo_data import CLASSES, README_TEXT, generate_demo, raw_pixel_baseline
from datasets.image_reader import OpenCVReader
from datasets.transforms import TestBaseTransform
from tools.make_demo_data import main as make_demo_main

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"n_train": 3, "n_test": 10, "size": 64}


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _meta(root, name):
    return [json.loads(line) for line in open(os.path.join(root, name), encoding="utf-8")]


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    generate_demo(str(root), seed=7, **SMALL)
    return root


def test_same_seed_same_bytes_other_seed_other_bytes(small_demo, tmp_path):
    generate_demo(str(tmp_path / "again"), seed=7, **SMALL)
    generate_demo(str(tmp_path / "other"), seed=8, **SMALL)
    first, again, other = _files(small_demo), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    assert first.keys() == other.keys() and first != other
    assert sum(name.endswith(".png") for name in first) == len(CLASSES) * (3 + 10 + 5)


def test_every_class_and_defect_present_in_meta_format(small_demo):
    train, test = _meta(small_demo, "train.json"), _meta(small_demo, "test.json")
    assert sorted({e["clsname"] for e in train}) == sorted(CLASSES) == sorted({e["clsname"] for e in test})
    for clsname in CLASSES:
        assert sum(e["clsname"] == clsname for e in train) == 3
        cls_test = [e for e in test if e["clsname"] == clsname]
        assert len(cls_test) == 10 and sum(e["label"] for e in cls_test) == 5
        assert {e["filename"].split("/")[2] for e in cls_test if e["label"]} == set(DEFECTS)
    for entry in train + test:
        assert entry["filename"].startswith(entry["clsname"] + "/") and (small_demo / entry["filename"]).is_file()
        assert entry["label_name"] == ("defective" if entry["label"] else "good")
        assert ("maskname" in entry) == bool(entry["label"])
    assert all(e["filename"].split("/")[1:3] == ["train", "good"] for e in train)


def test_masks_match_images_and_are_non_empty(small_demo):
    for entry in _meta(small_demo, "test.json"):
        image = cv2.imread(str(small_demo / entry["filename"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        if entry["label"]:
            mask = cv2.imread(str(small_demo / entry["maskname"]), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
            assert 0 < (mask > 0).mean() < 0.5


def test_demo_loads_through_custom_dataset(small_demo):
    dataset = CustomDataset(OpenCVReader(str(small_demo), "RGB"), str(small_demo / "test.json"), False,
                            TestBaseTransform([32, 32]), Normalize([0.5] * 3, [0.5] * 3))
    labels = [dataset[i]["label"] for i in range(len(dataset))]
    assert all((dataset[i]["mask"].sum() > 0) == bool(labels[i]) for i in range(len(dataset)))


def test_readme_is_written_and_matches_tracked_copy(small_demo):
    assert (small_demo / "README").read_text(encoding="utf-8") == README_TEXT
    assert (ROOT / "data/demo/README").read_text(encoding="utf-8") == README_TEXT


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_defect_changes_exactly_its_mask(name):
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.uniform(0.2, 0.8, (128, 128, 3)).astype(np.float32), (0, 0), 2)
    kwargs = {"other": rng.uniform(0, 1, (160, 200, 3)).astype(np.float32)} if name == "foreign_object" else {}
    out, mask = DEFECTS[name](image, rng, (64.0, 60.0), **kwargs)
    changed = np.any(out != image, axis=2)
    assert out.shape == image.shape and mask.shape == (128, 128) and mask.any()
    assert not changed[mask == 0].any()  # nothing outside the mask changed
    assert changed[mask > 0].mean() > 0.95  # and (almost) every mask pixel did
    assert out.min() >= 0 and out.max() <= 1


def test_raw_pixel_baseline_detects_an_obvious_defect(tmp_path):
    gray = np.full((16, 16, 3), 120, np.uint8)
    for name in ("c/train/good/000.png", "c/train/good/001.png", "c/test/good/000.png"):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        cv2.imwrite(str(tmp_path / name), gray)
    bad, mask = gray.copy(), np.zeros((16, 16), np.uint8)
    bad[4:8, 4:8], mask[4:8, 4:8] = 255, 255
    os.makedirs(tmp_path / "c/test/hole", exist_ok=True)
    os.makedirs(tmp_path / "c/ground_truth/hole", exist_ok=True)
    cv2.imwrite(str(tmp_path / "c/test/hole/000.png"), bad)
    cv2.imwrite(str(tmp_path / "c/ground_truth/hole/000_mask.png"), mask)
    from datasets.meta_builders import build_mvtec_meta
    build_mvtec_meta(str(tmp_path), str(tmp_path))
    assert raw_pixel_baseline(str(tmp_path)) == (1.0, 1.0)


def test_default_demo_defeats_raw_pixel_baseline(tmp_path, capsys):
    """The full default dataset (what `make demo` trains on): the raw-pixel detector stays weak."""
    make_demo_main(["--out", str(tmp_path), "--baseline"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("demo data: 5 classes") and "250 train, 75 good + 75 defective" in lines[0]
    match = re.fullmatch(r"raw-pixel baseline: mean image AUROC ([\d.]+), mean pixel AUROC ([\d.]+)", lines[1])
    image_auc, pixel_auc = float(match.group(1)), float(match.group(2))
    assert 0.5 <= image_auc <= 0.75 and 0.5 <= pixel_auc <= 0.75


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown"):
        generate_demo("/nonexistent-never-written", classes=["bottle"])
    with pytest.raises(ValueError, match="size >= 64"):
        generate_demo("/nonexistent-never-written", size=32)


def test_exact_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from datasets.demo_data import _auroc
    rng = np.random.default_rng(0)
    for _ in range(4):
        labels = rng.random(3000) < 0.2
        scores = np.round(rng.random(3000) * 10) + labels * rng.random()  # many ties
        expected = roc_auc_score(labels, scores)
        assert _auroc(labels, scores) == pytest.approx(max(expected, 1 - expected), abs=1e-12)
    assert _auroc([0, 0, 1], [0.9, 0.8, 0.1]) == 1.0  # below 0.5 -> flipped, as the original
