"""ONNX export: onnxruntime reproduces PyTorch's maps and image scores (batch 1 and 3, dynamic batch)."""
import numpy as np
import pytest
import torch

from models.model_helper import ModelHelper
from tests.test_train_val import make_config
from tools import export_onnx as export_tool
from utils.checkpoint import save_checkpoint
from utils.onnx_export import OUTPUT_NAMES, AnomalyScorer, check_parity, onnx_predict, read_metadata, torch_image_score
from utils.predictor import Predictor, inference_config


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_dataset):
    """A tiny randomly initialised model (64 px, width 32), its checkpoint and its ONNX file."""
    root = tmp_path_factory.mktemp("onnx")
    config = make_config(root, tiny_dataset)
    torch.manual_seed(0)
    model = ModelHelper(inference_config(str(config)).net)
    save_checkpoint({"state_dict": model.state_dict()}, str(root / "ckpt.pth.tar"))
    onnx_path = root / "model.onnx"
    assert export_tool.main(["--config", str(config), "--checkpoint", str(root / "ckpt.pth.tar"),
                             "--output", str(onnx_path)]) == 0
    return config, root / "ckpt.pth.tar", onnx_path


def test_onnx_matches_pytorch_batch_1_and_3(exported):
    config, ckpt, onnx_path = exported
    predictor = Predictor(str(config), str(ckpt), device="cpu")
    scorer = AnomalyScorer(predictor.model, predictor.score_name, predictor.score_kwargs).eval()
    report = check_parity(scorer, str(onnx_path), [64, 64], batch_sizes=(1, 3), seed=1)
    assert set(report.map_diff) == {1, 3} and report.map_scale > 1.0
    assert max(report.map_diff.values()) <= 1e-4 and max(report.score_diff.values()) <= 1e-4


def test_onnx_on_real_images_matches_the_predictor(exported, tiny_dataset):
    config, ckpt, onnx_path = exported
    predictor = Predictor(str(config), str(ckpt), device="cpu")
    paths = [str(tiny_dataset / f"{cls}/test/{sub}/{i:03d}.png")
             for cls, sub, i in (("alpha", "good", 0), ("alpha", "bad", 1), ("beta", "bad", 3))]
    images = torch.stack([predictor.read(p)[0] for p in paths]).numpy()
    maps, scores = onnx_predict(str(onnx_path), images)
    expected = predictor.predict(paths, batch_size=3)
    assert maps.shape == (3, 1, 64, 64) and scores.shape == (3,)
    for i, result in enumerate(expected):
        np.testing.assert_allclose(maps[i, 0], result["map"], rtol=0, atol=1e-4)
        assert scores[i] == pytest.approx(result["score"], abs=1e-4)  # avg_pool float32 vs cv2 float64
    meta = read_metadata(str(onnx_path))
    assert meta["input_size"] == [64, 64]
    assert meta["image_score"] == {"name": "max", "kwargs": {"avgpool_size": [16, 16]}}
    assert meta["outputs"] == list(OUTPUT_NAMES) and meta["thresholds"] is None


@pytest.mark.parametrize("name", ["max", "mean", "std"])
def test_graph_image_score_equals_the_metrics_definition(name):
    from utils.metrics.image_scores import image_scores

    maps = torch.rand(4, 1, 40, 48, generator=torch.Generator().manual_seed(2))
    kwargs = {"avgpool_size": [16, 8]} if name == "max" else {}
    expected = image_scores(name, maps[:, 0].numpy(), kwargs)
    np.testing.assert_allclose(torch_image_score(maps, name, kwargs).numpy(), expected, rtol=1e-5)
