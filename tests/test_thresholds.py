"""Thresholds: exact F1-optimal thresholds against brute force, the image score choice, per-class and
global records, and the round trip through the checkpoint and thresholds.json."""
import json
from pathlib import Path

import numpy as np
import pytest

from datasets.data_builder import build_dataloader
from tests.test_infer import trained_experiment
from tests.test_train_val import make_config, run
from utils.checkpoint import load_checkpoint
from utils.config_helper import load_config
from utils.criterion_helper import build_criterion
from utils.engine import run_evaluation
from utils.metrics.image_scores import image_scores
from utils.predictor import Predictor
from utils.thresholds import (best_f1_threshold, compute_thresholds, image_score_spec, load_thresholds_json,
                              save_thresholds_json, select_threshold)

ROOT = Path(__file__).resolve().parents[1]


def brute_force_f1(scores, labels):
    """Every distinct score as threshold (score >= t is positive); the highest t among equal best F1;
    reported halfway to the next lower distinct score."""
    distinct = np.unique(scores)[::-1]
    best_f1, best_i = -1.0, None
    for i, t in enumerate(distinct):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        f1 = 2 * tp / (np.sum(predicted) + np.sum(labels))
        if f1 > best_f1:
            best_f1, best_i = f1, i
    if best_i + 1 == len(distinct):
        return distinct[best_i], best_f1
    return (float(distinct[best_i]) + float(distinct[best_i + 1])) / 2, best_f1


@pytest.mark.parametrize("seed", range(6))
def test_f1_optimal_threshold_equals_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = rng.random(n) < rng.uniform(0.05, 0.6)
    labels[0] = True
    scores = np.round(rng.normal(size=n) + labels * rng.uniform(0, 2), 1)  # coarse: many ties, across labels too
    scores = scores.astype(np.float32 if seed % 2 else np.float64)
    found = best_f1_threshold(scores, labels)
    threshold, f1 = brute_force_f1(scores, labels)
    assert found["threshold"] == threshold and found["f1"] == pytest.approx(f1, abs=1e-12)
    assert np.array_equal(scores >= found["threshold"], scores >= np.unique(scores[scores >= threshold]).min())
    assert found["positives"] == labels.sum() and found["negatives"] == (~labels).sum() and found["stride"] == 1


def test_threshold_edge_cases_and_subsampling():
    assert best_f1_threshold(np.array([0.1, 0.5]), np.array([0, 0])) is None  # nothing to detect
    only_positives = best_f1_threshold(np.array([0.3, 0.7, 0.7]), np.array([1, 1, 1]))
    assert only_positives["threshold"] == pytest.approx(0.3) and only_positives["f1"] == 1.0  # nothing lower
    assert best_f1_threshold(np.array([1.0, 2.0, 4.0]), np.array([0, 1, 1]))["threshold"] == 1.5
    adjacent = np.array([1.0, np.nextafter(1.0, 2.0)])  # no float between them: the flagged score itself
    assert best_f1_threshold(adjacent, np.array([0, 1]))["threshold"] == adjacent[1]
    scores = np.arange(100, dtype=np.float32)
    sampled = best_f1_threshold(scores, scores >= 60, max_samples=30)
    assert sampled["stride"] == 4 and sampled["positives"] == 10 and sampled["threshold"] == 58.0  # every 4th: 56, 60


def test_image_score_follows_the_config():
    mvtec = load_config(str(ROOT / "experiments/MVTec-AD/config.yaml")).evaluator  # auc: std, max, pixel; key pixel
    assert image_score_spec(mvtec) == ("max", {"avgpool_size": [16, 16]})
    cifar = load_config(str(ROOT / "experiments/CIFAR-10/01234/config.yaml")).evaluator  # key mean_mean_auc
    assert image_score_spec(cifar) == ("mean", {})
    assert image_score_spec({"metrics": {"auc": [{"name": "pixel"}, {"name": "std"}]}}) == ("std", {})
    assert image_score_spec({"metrics": {"auc": [{"name": "pixel"}]}}) == ("max", {"avgpool_size": [16, 16]})


def _synthetic(seed=0):
    rng = np.random.default_rng(seed)
    preds = rng.random((12, 32, 32)).astype(np.float32)
    masks = np.zeros_like(preds, dtype=np.uint8)
    for i in range(1, 12, 2):
        masks[i, 4:12, 8:20] = 1
        preds[i, 4:12, 8:20] += 0.5
    infos = [{"clsname": "a" if i < 6 else "b", "filename": f"{i}.png"} for i in range(12)]
    return infos, preds, masks


def test_compute_thresholds_per_class_and_global():
    infos, preds, masks = _synthetic()
    evaluator = {"metrics": {"auc": [{"name": "max", "kwargs": {"avgpool_size": [8, 8]}}]}}
    found = compute_thresholds(infos, preds, masks, evaluator)
    assert found["image_score"] == {"name": "max", "kwargs": {"avgpool_size": [8, 8]}}
    assert sorted(found["classes"]) == ["a", "b"] and found["map_size"] == [32, 32]
    scores = image_scores("max", preds, {"avgpool_size": [8, 8]})
    labels = masks.reshape(12, -1).any(axis=1)
    assert found["global"]["image"] == best_f1_threshold(scores, labels)
    assert found["classes"]["b"]["pixel"] == best_f1_threshold(preds[6:], masks[6:])
    assert found["global"]["score_range"] == {"min": float(preds.min()), "max": float(preds.max())}
    assert found["classes"]["a"]["images"] == 6
    subsampled = compute_thresholds(infos, preds, masks, evaluator, max_pixels=1000)
    assert subsampled["global"]["pixel"]["stride"] == 13 and subsampled["classes"]["a"]["pixel"]["stride"] == 7
    assert select_threshold(found, "b", "pixel") == (found["classes"]["b"]["pixel"]["threshold"], "class:b")
    assert select_threshold(found, "unknown") == (found["global"]["image"]["threshold"], "global")
    assert select_threshold(None, "b") == (None, "none")
    single = compute_thresholds([{"clsname": "a"}] * 12, preds, masks, evaluator)
    assert single["global"] == single["classes"]["a"] == found["global"]


def test_thresholds_json_round_trip_and_errors(tmp_path):
    found = compute_thresholds(*_synthetic(), {})
    save_thresholds_json(found, str(tmp_path / "t.json"))
    assert load_thresholds_json(str(tmp_path / "t.json")) == found
    (tmp_path / "bad.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(ValueError, match=r"bad.json is not a thresholds record: it lacks \['image_score'"):
        load_thresholds_json(str(tmp_path / "bad.json"))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_thresholds_json(str(tmp_path / "nope.json"))


def test_training_stores_thresholds_in_checkpoint_and_json(tmp_path_factory, tiny_dataset):
    exp = trained_experiment(tmp_path_factory, tiny_dataset)
    ckpt = load_checkpoint(str(exp / "checkpoints/ckpt.pth.tar"))
    stored = ckpt["thresholds"]
    assert stored["epoch"] == 1 and set(stored["classes"]) == {"alpha", "beta"}
    assert json.loads((exp / "checkpoints/thresholds.json").read_text()) == stored
    assert json.loads((exp / "checkpoints/thresholds_best.json").read_text()) == stored
    assert load_checkpoint(str(exp / "checkpoints/ckpt_best.pth.tar"))["thresholds"] == stored
    # Recomputed from the checkpoint's own evaluation maps: the same record.
    predictor = Predictor(str(exp / "config.yaml"), str(exp / "checkpoints/ckpt.pth.tar"), device="cpu")
    cfg = load_config(str(exp / "config.yaml"))
    _, loader = build_dataloader(cfg.dataset, distributed=False)
    results = run_evaluation(predictor.model, loader, build_criterion(cfg.criterion))
    again = compute_thresholds(results.fileinfos, results.preds, results.masks, cfg.evaluator)
    assert {**again, "epoch": 1} == stored
    assert predictor.thresholds == stored


def test_evaluate_only_writes_the_checkpoints_thresholds_to_the_log(tmp_path, tmp_path_factory, tiny_dataset):
    exp = trained_experiment(tmp_path_factory, tiny_dataset)
    ckpt = exp / "checkpoints/ckpt.pth.tar"
    assert run(make_config(tmp_path, tiny_dataset), f"saver.load_path={ckpt}", evaluate=True) == 0
    assert not (tmp_path / "checkpoints").exists()  # -e leaves the training run's files alone
    stored = load_checkpoint(str(ckpt))["thresholds"]
    assert {**load_thresholds_json(str(tmp_path / "log/thresholds.json")), "epoch": 1} == stored
