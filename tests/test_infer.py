"""Inference: tools/infer.py and the Predictor reproduce the evaluation's maps, the original
preprocessing exactly, thresholds per class, bad inputs handled."""
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from datasets.data_builder import build_dataloader
from tests.test_train_val import make_config, run
from tools import infer
from utils.config_helper import load_config
from utils.criterion_helper import build_criterion
from utils.engine import run_evaluation
from utils.metrics.image_scores import image_scores
from utils.predictor import Predictor, collect_inputs, inference_config

_TRAINED: dict = {}


def trained_experiment(tmp_path_factory, data: Path) -> Path:
    """One tiny 1-epoch run per session (shared by the inference and threshold tests)."""
    if "exp" not in _TRAINED:
        exp = tmp_path_factory.mktemp("infer_exp")
        assert run(make_config(exp, data, max_epoch=1)) == 0
        _TRAINED["exp"] = exp
    return _TRAINED["exp"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    exp = trained_experiment(tmp_path_factory, tiny_dataset)
    return exp / "config.yaml", exp / "checkpoints/ckpt.pth.tar"


@pytest.fixture(scope="module")
def evaluation(trained):
    """The maps ``train_val.py -e`` computes (run_evaluation over the test loader), by filename."""
    config, ckpt = trained
    predictor = Predictor(str(config), str(ckpt), device="cpu")
    cfg = load_config(str(config))
    _, loader = build_dataloader(cfg.dataset, distributed=False)
    results = run_evaluation(predictor.model, loader, build_criterion(cfg.criterion))
    return {info["filename"]: (info["clsname"], pred) for info, pred in zip(results.fileinfos, results.preds)}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_meta_file_inference_reproduces_evaluation_maps(trained, evaluation, tiny_dataset, tmp_path):
    config, ckpt = trained
    out = tmp_path / "out"
    assert infer.main(["--config", str(config), "--checkpoint", str(ckpt), "--input", str(tiny_dataset / "test.json"),
                       "--output", str(out), "--batch-size", "3", "--device", "cpu"]) == 0
    rows = _read_csv(out / "results.csv")
    assert [r["filename"] for r in rows] == list(evaluation)
    thresholds = torch.load(ckpt, weights_only=True)["thresholds"]
    for row in rows:
        clsname, expected = evaluation[row["filename"]]
        stem = row["filename"][:-4].replace("/", "__")
        score_map = np.load(out / "maps" / f"{stem}.npy")
        assert score_map.dtype == np.float32 and score_map.shape == (64, 64)
        np.testing.assert_allclose(score_map, expected, rtol=0, atol=1e-5)
        score = image_scores("max", expected[None], {"avgpool_size": [16, 16]})[0]
        assert float(row["score"]) == pytest.approx(score, rel=1e-6)
        threshold = thresholds["classes"][clsname]["image"]["threshold"]
        assert row["class"] == clsname and row["threshold_source"] == f"class:{clsname}"
        assert float(row["threshold"]) == pytest.approx(threshold, rel=1e-7)
        assert row["decision"] == ("anomalous" if float(row["score"]) >= float(row["threshold"]) else "normal")
        overlay = cv2.imread(str(out / "overlays" / f"{stem}.png"))
        assert overlay.shape == (64, 128, 3)  # original size, global | self-normalised


def _original_pipeline(path: Path, model, cfg) -> np.ndarray:
    """The original UniAD test pipeline written out: cv2 read -> RGB -> PIL -> Resize -> ToTensor -> Normalize."""
    image = Image.fromarray(cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    resize = transforms.Resize(list(cfg.dataset.input_size), transforms.InterpolationMode.BILINEAR)
    normalize = transforms.Normalize(cfg.dataset.pixel_mean, cfg.dataset.pixel_std)
    pipeline = transforms.Compose([resize, transforms.ToTensor(), normalize])
    with torch.no_grad():
        return model({"image": pipeline(image)[None]})["pred"][0, 0].numpy()


def _write_folder(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for rel, (h, w) in {"a/img.png": (80, 100), "b/img.png": (64, 64), "c.jpg": (50, 90)}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_with_unreadable_file_matches_original_pipeline(trained, tmp_path):
    config, ckpt = trained
    folder, out = _write_folder(tmp_path / "images"), tmp_path / "out"
    assert infer.main(["--config", str(config), "--checkpoint", str(ckpt), "--input", str(folder),
                       "--output", str(out), "--class-name", "alpha", "--device", "cpu", "--batch-size", "1"]) == 0
    rows = {r["filename"]: r for r in _read_csv(out / "results.csv")}
    assert sorted(rows) == ["a/img.png", "b/img.png", "broken.png", "c.jpg"]
    assert "cannot decode" in rows["broken.png"]["error"] and rows["broken.png"]["score"] == ""
    predictor = Predictor(str(config), str(ckpt), device="cpu")
    expected_files = (("a/img.png", "a__img", (80, 100)), ("b/img.png", "b__img", (64, 64)), ("c.jpg", "c", (50, 90)))
    for name, stem, size in expected_files:
        assert rows[name]["error"] == "" and rows[name]["threshold_source"] == "class:alpha"
        expected = _original_pipeline(folder / name, predictor.model, predictor.cfg)
        np.testing.assert_array_equal(np.load(out / "maps" / f"{stem}.npy"), expected)  # same batch size: bit-equal
        assert cv2.imread(str(out / "overlays" / f"{stem}.png")).shape == (size[0], 2 * size[1], 3)
    assert not (out / "maps" / "broken.npy").exists()


def test_predict_api_arrays_equal_paths_and_threshold_override(trained, tiny_dataset):
    config, ckpt = trained
    predictor = Predictor(str(config), str(ckpt), device="cpu")
    paths = [tiny_dataset / "alpha/test/good/000.png", tiny_dataset / "beta/test/bad/001.png"]
    arrays = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    by_path = predictor.predict([str(p) for p in paths], class_names=["alpha", None])
    by_array = predictor.predict(arrays, batch_size=1)
    for a, b in zip(by_path, by_array):
        np.testing.assert_allclose(a["map"], b["map"], rtol=1e-6)  # batch 2 vs 1: last-bit round-off
        assert set(a) >= {"map", "score", "threshold", "is_anomaly"}
    assert by_path[0]["threshold_source"] == "class:alpha" and by_path[1]["threshold_source"] == "global"
    assert by_path[1]["threshold"] == predictor.thresholds["global"]["image"]["threshold"]
    fixed = predictor.predict([str(paths[0])], threshold=by_path[0]["score"] + 1.0)[0]
    assert fixed["threshold_source"] == "fixed" and fixed["is_anomaly"] is False


def test_unique_stems_for_same_names_in_different_folders(tmp_path):
    for rel in ("x/a.png", "y/a.png", "x/a.jpg", "x__a.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    stems = [item.stem for item in collect_inputs(str(tmp_path))]
    assert len(set(stems)) == 4 and "y__a" in stems


def test_empty_input_is_a_clear_error(trained, tmp_path):
    config, ckpt = trained
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found in folder"):
        infer.main(["--config", str(config), "--checkpoint", str(ckpt), "--input", str(tmp_path / "empty"),
                    "--output", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match="neither an image file"):
        collect_inputs(str(tmp_path / "missing"))


def test_checkpoint_that_does_not_fit_lists_the_keys(trained):
    config, ckpt = trained
    listing = r"shape-mismatched keys: reconstruction\.pos_embed\.row_embed\.weight saved \(4, 16\) vs model \(4, 8\)"
    with pytest.raises(RuntimeError, match=listing):
        Predictor(str(config), str(ckpt), device="cpu", opts=["net.reconstruction.kwargs.hidden_dim=16"])


def test_thresholds_file_with_another_image_score_is_refused(trained, tmp_path):
    config, ckpt = trained
    thresholds = json.loads((ckpt.parent / "thresholds.json").read_text())
    thresholds["image_score"] = {"name": "std", "kwargs": {}}
    (tmp_path / "t.json").write_text(json.dumps(thresholds))
    with pytest.raises(ValueError, match="chosen for the image score"):
        Predictor(str(config), str(ckpt), device="cpu", thresholds=str(tmp_path / "t.json"))


def test_inference_config_never_downloads_nor_saves_reconstructions():
    cfg = inference_config(str(Path(__file__).resolve().parents[1] / "experiments/MVTec-AD/config.yaml"))
    kwargs = {entry.name: entry.kwargs for entry in cfg.net}
    assert kwargs["backbone"]["pretrained"] is False and kwargs["reconstruction"]["save_recon"] is False
