"""Exact metrics: each one against sklearn or a slow per-threshold reference, and the original auc rules."""
import logging

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from tools.benchmark import main as benchmark_cli
from utils.bench_metrics import run_benchmark, write_doc_section
from utils.eval_helper import log_metrics, performances
from utils.metrics.curves import threshold_curve
from utils.metrics.image_scores import image_scores
from utils.metrics.regions import label_regions
from utils.metrics.sort_keys import descending_keys32, descending_keys64, exact_float32
from utils.metrics.summaries import auroc, average_precision, f1_max

ALL_NAMES = [{"name": "mean"}, {"name": "std"}, {"name": "max", "kwargs": {"avgpool_size": [3, 3]}},
             {"name": "pixel"}]


def make_case(seed, n=12, size=16, classes=("cls_a", "cls_b"), dtype=np.float32):
    """Maps with many ties (2 decimals) and hot pixels; masks: empty ones, several regions, diagonals."""
    rng = np.random.default_rng(seed)
    preds = np.round(rng.random((n, size, size)), 2)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        if (i // len(classes)) % 3 == 0:
            continue  # normal image (every class gets some)
        for _ in range(int(rng.integers(1, 4))):  # up to 3 regions, possibly touching
            y, x = rng.integers(0, size - 4, 2)
            h, w = rng.integers(1, 5, 2)
            masks[i, y:y + h, x:x + w] = 1
        masks[i, 0, 0] = masks[i, 1, 1] = 1  # diagonal pair: one region under 8-connectivity
        preds[i][masks[i] > 0] += rng.choice([0.0, 0.2, 0.5])
    hot = rng.integers(0, n * size * size, 5)
    preds.reshape(-1)[hot] = 3.0  # hot pixels, inside or outside defects
    fileinfos = [{"clsname": classes[i % len(classes)]} for i in range(n)]
    return fileinfos, preds.astype(dtype), masks


def class_slices(fileinfos, clsname):
    return np.array([info["clsname"] == clsname for info in fileinfos])


def sklearn_f1max(labels, scores):
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return f1.max()


def slow_aupro(preds, masks, fpr_limit):
    """Reference: loop over every distinct threshold, per-image 2-D labelling, explicit trapezoids."""
    regions = []
    for pred, mask in zip(preds, masks):
        labelled, count = ndimage.label(mask > 0, structure=np.ones((3, 3)))
        regions += [(pred, labelled == r) for r in range(1, count + 1)]
    normal = masks <= 0
    points = [(0.0, 0.0)]
    for threshold in np.unique(preds)[::-1]:
        fpr = ((preds >= threshold) & normal).sum() / normal.sum()
        pro = np.mean([(pred[region] >= threshold).sum() / region.sum() for pred, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_limit) / 2
            break
    return area / fpr_limit


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_metrics_match_sklearn(seed, dtype):
    fileinfos, preds, masks = make_case(seed, dtype=dtype)
    if dtype == np.float64:
        preds = preds + 1e-9  # ties kept, values no longer float32-exact: the argsort path
        assert exact_float32(preds) is None
    cfg = {"auc": [{"name": "pixel"}], "ap": [{"name": "pixel"}], "f1max": [{"name": "pixel"}]}
    metrics = performances(fileinfos, preds, masks, cfg)
    for cls in ("cls_a", "cls_b"):
        sel = class_slices(fileinfos, cls)
        labels, scores = masks[sel].ravel() > 0, preds[sel].ravel()
        auc = roc_auc_score(labels, scores)
        assert metrics[f"{cls}_pixel_auc"] == pytest.approx(max(auc, 1 - auc), abs=1e-9)
        assert metrics[f"{cls}_pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
        assert metrics[f"{cls}_pixel_f1max"] == pytest.approx(sklearn_f1max(labels, scores), abs=1e-9)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("seed", [0, 3])
def test_aupro_matches_slow_reference(seed, fpr_limit):
    fileinfos, preds, masks = make_case(seed)
    cfg = {"aupro": [{"name": "pixel", "kwargs": {"fpr_limit": fpr_limit}}]}
    metrics = performances(fileinfos, preds, masks, cfg)
    for cls in ("cls_a", "cls_b"):
        sel = class_slices(fileinfos, cls)
        expected = slow_aupro(preds[sel], masks[sel], fpr_limit)
        assert metrics[f"{cls}_pixel_aupro"] == pytest.approx(expected, abs=1e-4)
        assert 0.0 < expected < 1.0  # a non-trivial case


def test_aupro_uses_eight_connectivity():
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 1, 1] = masks[0, 2, 2] = masks[0, 4, 4] = True  # diagonal pair + a lone pixel
    _, sizes = label_regions(masks)
    assert sizes[1:].tolist() == [2, 1]
    preds = np.zeros((2, 6, 6), dtype=np.float32)
    preds[0, 1, 1] = 1.0  # half of the pair: PRO = (1/2 + 0) / 2 regions once this pixel is in
    two = np.concatenate([masks, np.zeros_like(masks)])
    metrics = performances([{"clsname": "c"}] * 2, preds, two, {"aupro": [{"name": "pixel"}]})
    # Curve (0,0) -> (0, 0.25) [pair half-covered, lone pixel not] -> (1, 1) [all pixels in].
    # At FPR 0.3: PRO = 0.25 + 0.75 * 0.3 = 0.475, area = 0.3 * (0.25 + 0.475) / 2, / 0.3 = 0.3625.
    # (4-connectivity would give 3 regions, PRO 1/3 at FPR 0, and 0.4333.)
    assert metrics["c_pixel_aupro"] == pytest.approx(0.3625, abs=1e-12)


def test_image_level_auc_rules_match_original():
    fileinfos, preds, masks = make_case(4, n=18)
    metrics = performances(fileinfos, preds, masks, {"auc": ALL_NAMES})
    for cls in ("cls_a", "cls_b"):
        sel = class_slices(fileinfos, cls)
        p, labels = preds[sel], masks[sel].reshape(sel.sum(), -1).any(axis=1)
        pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(p)[:, None], [3, 3], stride=1)
        scores = {"mean": p.reshape(len(p), -1).mean(1), "std": p.reshape(len(p), -1).std(1, ddof=0),
                  "max": pooled.flatten(1).amax(1).numpy()}
        for name, s in scores.items():
            auc = roc_auc_score(labels, s)
            assert metrics[f"{cls}_{name}_auc"] == pytest.approx(max(auc, 1 - auc), abs=1e-6)


def test_image_level_ap_and_f1max_match_sklearn():
    fileinfos, preds, masks = make_case(5, n=20)
    cfg = {"ap": ALL_NAMES[:3], "f1max": ALL_NAMES[:3]}
    metrics = performances(fileinfos, preds, masks, cfg)
    for cls in ("cls_a", "cls_b"):
        sel = class_slices(fileinfos, cls)
        p, labels = preds[sel].astype(np.float64), masks[sel].reshape(sel.sum(), -1).any(axis=1)
        std = p.reshape(len(p), -1).std(1)
        assert metrics[f"{cls}_std_ap"] == pytest.approx(average_precision_score(labels, std), abs=1e-9)
        assert metrics[f"{cls}_std_f1max"] == pytest.approx(sklearn_f1max(labels, std), abs=1e-9)


@pytest.mark.parametrize("kernel", [[16, 16], [5, 5], [4, 7], 3])
def test_max_matches_torch_avg_pool(kernel):
    rng = np.random.default_rng(0)
    preds = rng.random((6, 24, 20)).astype(np.float32)
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(preds)[:, None], kernel, stride=1)
    expected = pooled.flatten(1).amax(1).double().numpy()
    got = image_scores("max", preds, {"avgpool_size": kernel})
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_auc_flips_below_half_but_ap_does_not():
    fileinfos, preds, masks = make_case(6)
    preds = -preds  # anti-correlated scores
    cfg = {"auc": [{"name": "pixel"}, {"name": "mean"}], "ap": [{"name": "pixel"}]}
    metrics = performances(fileinfos, preds, masks, cfg)
    sel = class_slices(fileinfos, "cls_a")
    labels, scores = masks[sel].ravel() > 0, preds[sel].ravel()
    raw = roc_auc_score(labels, scores)
    assert raw < 0.5
    assert metrics["cls_a_pixel_auc"] == pytest.approx(1 - raw, abs=1e-9)
    assert metrics["cls_a_pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert metrics["cls_a_mean_auc"] >= 0.5


def test_keys_and_class_means():
    fileinfos, preds, masks = make_case(7, classes=("bottle", "metal_nut", "zipper"), n=15)
    cfg = {"auc": ALL_NAMES, "aupro": [{"name": "pixel"}]}
    metrics = performances(fileinfos, preds, masks, cfg)
    columns = ["mean_auc", "std_auc", "max_auc", "pixel_auc", "pixel_aupro"]
    expected = {f"{c}_{col}" for c in ("bottle", "metal_nut", "zipper", "mean") for col in columns}
    assert set(metrics) == expected
    for col in columns:
        per_class = [metrics[f"{c}_{col}"] for c in ("bottle", "metal_nut", "zipper")]
        assert metrics[f"mean_{col}"] == pytest.approx(np.mean(per_class), abs=1e-12)


def test_class_without_defects_is_nan_with_warning(caplog):
    fileinfos, preds, masks = make_case(8)
    masks[class_slices(fileinfos, "cls_b")] = 0
    cfg = {"auc": [{"name": "max", "kwargs": {"avgpool_size": [3, 3]}}, {"name": "pixel"}],
           "aupro": [{"name": "pixel"}]}
    with caplog.at_level(logging.WARNING, logger="utils.eval_helper"):
        metrics = performances(fileinfos, preds, masks, cfg)
    for col in ("max_auc", "pixel_auc", "pixel_aupro"):
        assert np.isnan(metrics[f"cls_b_{col}"])
        assert np.isfinite(metrics[f"cls_a_{col}"])
        assert metrics[f"mean_{col}"] == metrics[f"cls_a_{col}"]  # nan class skipped
    text = caplog.text
    assert "cls_b_pixel_auc is nan" in text and "0 defective" in text
    assert "mean_pixel_auc skips classes with nan: ['cls_b']" in text


@pytest.mark.parametrize("kind", ["bool", "uint8", "float", "float_soft", "channel_dim"])
def test_mask_and_shape_variants_agree(kind):
    fileinfos, preds, masks = make_case(9)
    cfg = {"auc": ALL_NAMES, "ap": [{"name": "pixel"}], "aupro": [{"name": "pixel"}]}
    reference = performances(fileinfos, preds, masks > 0, cfg)
    variants = {"bool": masks > 0, "uint8": masks * 255, "float": masks.astype(np.float32),
                "float_soft": masks * np.float32(0.4), "channel_dim": masks[:, None]}
    p = preds[:, None] if kind == "channel_dim" else preds
    assert performances(fileinfos, p, variants[kind], cfg) == reference


def test_float32_and_float64_paths_agree():
    fileinfos, preds, masks = make_case(10)
    cfg = {"auc": [{"name": "pixel"}], "f1max": [{"name": "pixel"}], "aupro": [{"name": "pixel"}]}
    fast = performances(fileinfos, preds, masks, cfg)
    for key, value in performances(fileinfos, preds.astype(np.float64), masks, cfg).items():
        assert value == pytest.approx(fast[key], abs=1e-12), key


def test_descending_keys_order_floats():
    values = np.array([0.5, -0.0, 0.0, -1e-30, np.inf, -np.inf, 3.0, -2.5, 1e-40, 0.5], dtype=np.float64)
    for keys in (descending_keys32(values.astype(np.float32)), descending_keys64(values)):
        by_key = values[np.argsort(keys, kind="stable")]
        assert np.all(np.diff(by_key) <= 0)  # descending
        assert keys[1] == keys[2]  # -0.0 == +0.0
    with pytest.raises(ValueError, match="NaN"):
        descending_keys32(np.array([1.0, np.nan], dtype=np.float32))


def test_masks_none_and_bad_inputs_raise():
    fileinfos, preds, masks = make_case(11)
    with pytest.raises(ValueError, match="masks is None"):
        performances(fileinfos, preds, None, {"auc": [{"name": "pixel"}]})
    assert performances(fileinfos, preds, None, {}) == {}
    with pytest.raises(ValueError, match="masks shape"):
        performances(fileinfos, preds, masks[:, :8], {"auc": [{"name": "pixel"}]})
    with pytest.raises(ValueError, match="fileinfos"):
        performances(fileinfos[:-1], preds, masks, {"auc": [{"name": "pixel"}]})


@pytest.mark.parametrize("cfg, message", [
    ({"aupro": [{"name": "max"}]}, "not defined for AUPRO"),
    ({"roc": [{"name": "pixel"}]}, "unknown family 'roc'"),
    ({"auc": [{"name": "median"}]}, "unknown name 'median'"),
    ({"auc": [{"name": "max", "kwargs": {"avgpool": 4}}]}, "unknown kwargs \\['avgpool'\\]"),
    ({"aupro": [{"name": "pixel", "kwargs": {"fpr_limit": 1.5}}]}, "fpr_limit=1.5"),
    ({"auc": [{"name": "pixel"}, {"name": "pixel"}]}, "more than once"),
    ({"auc": [{"name": "max", "kwargs": {"avgpool_size": [32, 32]}}]}, "larger than the score maps"),
])
def test_invalid_metric_configs_name_the_fault(cfg, message):
    fileinfos, preds, masks = make_case(12)
    with pytest.raises(ValueError, match=message):
        performances(fileinfos, preds, masks, cfg)


def test_log_metrics_table_order(caplog):
    fileinfos, preds, masks = make_case(13, classes=("zipper", "bottle", "metal_nut"), n=15)
    cfg = {"auc": [{"name": "pixel"}, {"name": "std"}], "aupro": [{"name": "pixel"}]}
    metrics = performances(fileinfos, preds, masks, cfg)
    logger = logging.getLogger("test.metrics.table")
    with caplog.at_level(logging.INFO, logger="test.metrics.table"):
        table = log_metrics(metrics, cfg, logger)
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["clsname", "pixel_auc", "std_auc", "pixel_aupro"]
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["bottle", "metal_nut", "zipper", "mean"]
    assert f"{metrics['metal_nut_pixel_auc']:g}" in lines[3]
    assert table in caplog.text and caplog.records[-1].name == "test.metrics.table"


def test_benchmark_small_run_matches_sklearn():
    result = run_benchmark(n=24, size=32, classes=3, seed=1)
    assert result["max_auroc_diff"] < 1e-9
    assert result["pixels"] == 24 * 32 * 32 and result["n_metrics"] == (3 + 1) * 13
    assert result["ratio"] == pytest.approx(result["suite_s"] / result["sklearn_s"])


def test_doc_section_is_replaced_in_place(tmp_path):
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text("# Performance\n\n<!-- train:begin -->\ntrain numbers\n<!-- train:end -->\n")
    write_doc_section(doc, "metrics", "first")
    write_doc_section(doc, "metrics", "second")
    text = doc.read_text()
    assert "train numbers" in text and "second" in text and "first" not in text
    assert text.count("<!-- metrics:begin -->") == 1 and text.index("train") < text.index("metrics")


def test_benchmark_cli_writes_its_section(tmp_path, capsys):
    doc = tmp_path / "perf.md"
    code = benchmark_cli(["metrics", "--n", "12", "--size", "24", "--classes", "2", "--doc", str(doc)])
    section = doc.read_text()
    ratio = float(section.split("ratio suite / sklearn (must be <= 1) | **")[1].split("**")[0])
    assert code == (0 if ratio <= 1.0 else 1)
    assert "tools/benchmark.py metrics --n 12 --size 24 --classes 2 --seed 0" in section
    assert "CPUs" in section and "numpy" in section and "suite" in capsys.readouterr().out


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_curve_without_positives_or_negatives_is_nan(labels):
    curve = threshold_curve(np.array([0.2, 0.5, 0.5], dtype=np.float32), np.array(labels))
    assert (curve.positives, curve.negatives) == (sum(labels), 3 - sum(labels))
    assert all(np.isnan(f(curve)) for f in (auroc, average_precision, f1_max))
