"""tools/build_meta.py and datasets/meta_builders.py on tiny fake dataset trees."""
import json
import os

import cv2
import numpy as np
import pytest
from torchvision.transforms import Normalize

from datasets.custom_dataset import CustomDataset
from datasets.image_reader import OpenCVReader
from datasets.transforms import TestBaseTransform
from tools.build_meta import main as build_meta_main


def _img(path, value=100, size=(12, 10)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.full((*size, 3), value, np.uint8))


def _mask(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mask = np.zeros((12, 10), np.uint8)
    mask[2:5, 3:6] = 255
    assert cv2.imwrite(str(path), mask)


def _lines(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _load(image_dir, meta_file):
    return CustomDataset(OpenCVReader(str(image_dir), "RGB"), str(meta_file), False, TestBaseTransform([8, 8]),
                         Normalize([0.5] * 3, [0.5] * 3))


@pytest.fixture
def mvtec_root(tmp_path):
    root = tmp_path / "mvtec"
    for cls in ("bottle", "wood"):
        for i in (1, 0):
            _img(root / cls / "train/good" / f"{i:03d}.png")
        _img(root / cls / "test/good/000.png")
        for defect in ("crack", "hole"):
            _img(root / cls / "test" / defect / "000.png")
            _mask(root / cls / "ground_truth" / defect / "000_mask.png")
    (root / "license.txt").write_text("not a class")
    return root


def test_mvtec_meta(mvtec_root, tmp_path, capsys):
    build_meta_main(["mvtec", "--root", str(mvtec_root), "--out", str(tmp_path / "out")])
    train, test = _lines(tmp_path / "out/train.json"), _lines(tmp_path / "out/test.json")
    assert [e["filename"] for e in train] == ["bottle/train/good/000.png", "bottle/train/good/001.png",
                                              "wood/train/good/000.png", "wood/train/good/001.png"]
    assert test[0] == {"filename": "bottle/test/crack/000.png", "label": 1, "label_name": "defective",
                       "maskname": "bottle/ground_truth/crack/000_mask.png", "clsname": "bottle"}
    assert [e["filename"] for e in test[:3]] == ["bottle/test/crack/000.png", "bottle/test/good/000.png",
                                                 "bottle/test/hole/000.png"]
    assert test[1]["label"] == 0 and "maskname" not in test[1]
    assert list(test[0]) == ["filename", "label", "label_name", "maskname", "clsname"]
    out = capsys.readouterr().out
    assert "bottle" in out and "wood" in out and out.count(" 2 ") >= 2
    dataset = _load(mvtec_root, tmp_path / "out/test.json")
    assert [dataset[i]["mask"].sum().item() > 0 for i in range(3)] == [True, False, True]


def test_mvtec_missing_mask_names_image(mvtec_root, tmp_path):
    os.remove(mvtec_root / "wood/ground_truth/hole/000_mask.png")
    with pytest.raises(FileNotFoundError, match=r"wood/test/hole/000\.png.*000_mask\.png"):
        build_meta_main(["mvtec", "--root", str(mvtec_root), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="train/good"):
        build_meta_main(["mvtec", "--root", str(tmp_path / "empty_dir_missing"), "--out", str(tmp_path)])


def _visa_tree(root, rows):
    (root / "split_csv").mkdir(parents=True)
    lines = ["object,split,label,image,mask"]
    for obj, split, label, image, mask in rows:
        _img(root / image)
        if mask:
            _mask(root / mask)
        lines.append(f"{obj},{split},{label},{image},{mask}")
    (root / "split_csv/1cls.csv").write_text("\n".join(lines) + "\n")


VISA_ROWS = [("candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""),
             ("candle", "test", "normal", "candle/Data/Images/Normal/0001.JPG", ""),
             ("candle", "test", "anomaly", "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png"),
             ("pcb1", "train", "normal", "pcb1/Data/Images/Normal/0000.JPG", "")]


def test_visa_meta(tmp_path):
    root = tmp_path / "VisA"
    _visa_tree(root, VISA_ROWS)
    build_meta_main(["visa", "--root", str(root)])
    train, test = _lines(root / "train.json"), _lines(root / "test.json")
    assert [(e["filename"], e["clsname"]) for e in train] == [(VISA_ROWS[0][3], "candle"), (VISA_ROWS[3][3], "pcb1")]
    assert test[1] == {"filename": VISA_ROWS[2][3], "label": 1, "label_name": "defective",
                       "maskname": VISA_ROWS[2][4], "clsname": "candle"}
    assert len(_load(root, root / "test.json")) == 2


def test_visa_errors_name_csv_line(tmp_path):
    root = tmp_path / "VisA"
    _visa_tree(root, VISA_ROWS)
    os.remove(root / VISA_ROWS[2][4])
    with pytest.raises(FileNotFoundError, match=r"1cls\.csv:4: mask not found"):
        build_meta_main(["visa", "--root", str(root), "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="split_csv"):
        build_meta_main(["visa", "--root", str(tmp_path)])


def _user_class(base, stems_bad, mask_suffix):
    for i in range(3):
        _img(base / "good" / f"g{i}.jpg")
    _img(base / "test_good/t0.png")
    for stem in stems_bad:
        _img(base / "bad" / f"{stem}.png", value=200)
        _mask(base / "masks" / f"{stem}{mask_suffix}")


def _folder_args(base, name, out, extra=()):
    return ["folder", "--name", name, "--train-good", str(base / "good"), "--test-good", str(base / "test_good"),
            "--test-bad", str(base / "bad"), "--out", str(out), *extra]


def test_folder_appends_and_replaces_classes(tmp_path):
    out = tmp_path / "meta"
    _user_class(tmp_path / "bolt", ["b0", "b1"], ".png")
    _user_class(tmp_path / "nut", ["n0"], "_mask.png")
    build_meta_main(_folder_args(tmp_path / "bolt", "bolt", out, ["--masks", str(tmp_path / "bolt/masks")]))
    build_meta_main(_folder_args(tmp_path / "nut", "nut", out, ["--masks", str(tmp_path / "nut/masks")]))
    train, test = _lines(out / "train.json"), _lines(out / "test.json")
    assert [e["clsname"] for e in train] == ["bolt"] * 3 + ["nut"] * 3
    assert train[0]["filename"] == "../bolt/good/g0.jpg"  # relative to the image dir (default --out)
    assert [e.get("maskname") for e in test if e["clsname"] == "nut"] == [None, "../nut/masks/n0_mask.png"]
    # re-adding bolt replaces it (now without masks) and keeps nut
    build_meta_main(_folder_args(tmp_path / "bolt", "bolt", out))
    test = _lines(out / "test.json")
    assert [e["clsname"] for e in test] == ["nut", "nut", "bolt", "bolt", "bolt"]
    assert all("maskname" not in e for e in test if e["clsname"] == "bolt")
    dataset = _load(out, out / "test.json")
    assert 0 < dataset[1]["mask"].sum() < 64 and dataset[3]["mask"].sum() == 64  # nut mask; bolt: whole image


def test_folder_image_dir_and_errors(tmp_path):
    _user_class(tmp_path / "bolt", ["b0"], ".png")
    out = tmp_path / "meta"
    build_meta_main(_folder_args(tmp_path / "bolt", "bolt", out, ["--image-dir", str(tmp_path)]))
    assert _lines(out / "train.json")[0]["filename"] == "bolt/good/g0.jpg"
    assert len(_load(tmp_path, out / "train.json")) == 3
    _user_class(tmp_path / "nut", ["n0"], ".png")
    with pytest.raises(ValueError, match="same --image-dir"):
        build_meta_main(_folder_args(tmp_path / "nut", "nut", out, ["--image-dir", str(tmp_path / "nut")]))
    os.remove(tmp_path / "nut/masks/n0.png")
    with pytest.raises(FileNotFoundError, match=r"no mask for defective image .*n0\.png"):
        build_meta_main(_folder_args(tmp_path / "nut", "nut", out, ["--masks", str(tmp_path / "nut/masks"),
                                                                     "--image-dir", str(tmp_path)]))
