"""Training benchmark: FLOP formula vs FlopCounterMode, memory/clock helpers, a tiny end-to-end run.

Speed is never asserted (shared 2-core machines): only that every number is produced and consistent.
"""
import math
import time

import pytest
import torch

from models.reconstructions.uniad import UniAD
from tools import benchmark
from utils import bench_metrics, bench_train
from utils.bench_train import (IterationClock, PeakMemory, counted_flops, reconstruction_forward_flops,
                               reconstruction_train_flops, summarize)

TINY_OPTS = ["dataset.input_size=[64,64]", "net.reconstruction.kwargs.hidden_dim=32",
             "net.reconstruction.kwargs.nhead=2", "net.reconstruction.kwargs.num_encoder_layers=1",
             "net.reconstruction.kwargs.num_decoder_layers=1", "net.reconstruction.kwargs.dim_feedforward=64",
             "net.reconstruction.kwargs.neighbor_mask.neighbor_size=[1,1]"]


def _uniad_kwargs(activation="relu", normalize_before=False):
    return dict(inplanes=[24], instrides=[16], feature_size=[4, 5], feature_jitter={"scale": 20.0, "prob": 1.0},
                neighbor_mask={"neighbor_size": [3, 3], "mask": [True, True, True]}, hidden_dim=32,
                pos_embed_type="learned", save_recon=False, initializer=None, nhead=4, num_encoder_layers=2,
                num_decoder_layers=3, dim_feedforward=64, activation=activation,
                normalize_before=normalize_before)


@pytest.mark.parametrize("activation,normalize_before", [("relu", False), ("glu", True)])
def test_flop_formula_equals_flop_counter_on_the_original_path(activation, normalize_before):
    kwargs = _uniad_kwargs(activation, normalize_before)
    torch.manual_seed(0)
    module = UniAD(**kwargs, attn_impl="torch")
    batch = 3
    forward, both = counted_flops(module, torch.randn(batch, 24, 4, 5))
    assert forward == batch * reconstruction_forward_flops(kwargs)
    assert both == batch * reconstruction_train_flops(kwargs)


def test_mvtec_config_is_about_10_gflop_per_image():
    kwargs = dict(feature_size=[14, 14], inplanes=[272], hidden_dim=256, dim_feedforward=1024,
                  num_encoder_layers=4, num_decoder_layers=4, activation="relu")
    forward = reconstruction_forward_flops(kwargs)
    # 3 x forward minus input_proj's skipped input gradient (2 * 196 * 256 * 272)
    assert reconstruction_train_flops(kwargs) == 3 * forward - 2 * 196 * 256 * 272
    assert 10.1e9 < reconstruction_train_flops(kwargs) < 10.3e9  # the "about 10.2 GFLOP"


def _touch_fresh_pages(nbytes: int) -> None:
    """Map new anonymous memory and write every page: resident for sure (malloc may reuse old pages)."""
    import mmap
    block = mmap.mmap(-1, nbytes)
    for offset in range(0, nbytes, mmap.PAGESIZE):
        block[offset] = 1
    block.close()


def test_peak_memory_sees_a_touched_allocation_after_reset():
    _touch_fresh_pages(96 * 2**20)  # raise the process high-water mark first
    with PeakMemory(torch.device("cpu")) as memory:
        _touch_fresh_pages(48 * 2**20)
    assert memory.delta >= 40 * 2**20
    assert memory.peak >= memory.delta


def test_iteration_clock_limits_and_times_each_iteration():
    clock = IterationClock(range(10), 4, torch.device("cpu"))
    assert len(clock) == 4
    seen = []
    for item in clock:
        time.sleep(0.01)
        seen.append(item)
    assert seen == [0, 1, 2, 3]
    assert len(clock.durations()) == 4 and min(clock.durations()) >= 0.009


def test_summarize_derives_ratio_share_and_projection():
    raw = {"batch": 4, "original": {"step_s": [0.8, 0.4, 2.0]}, "peak_fp32": 100e9, "peak_bf16": None,
           "ours": {"step_s": [0.2, 0.1, 0.3], "epoch1_s": 12.0, "epoch1_images": 40},
           "formula_train": 5e9, "inference": {"ms_per_img": 7.0}}
    out = summarize(raw)
    assert out["original_ms"] == pytest.approx(200.0) and out["ours_ms"] == pytest.approx(50.0)
    assert out["ratio"] == pytest.approx(4.0)
    assert out["ours_mean_ms"] == pytest.approx(50.0) and out["epoch1_ms"] == pytest.approx(300.0)
    assert out["fill_extra_ms"] == pytest.approx(250.0)
    assert out["achieved_gflops"] == pytest.approx(100.0) and out["peak_share"] == pytest.approx(1.0)
    expected_h = (1000 * 3629 * 50.0 + 3629 * 250.0) / 1000 / 3600
    assert out["projected_ours_h"] == pytest.approx(expected_h)


@pytest.fixture(scope="module")
def tiny_result():
    args = benchmark.build_parser().parse_args(
        ["train", "--images", "8", "--batch", "4", "--warmup", "1", "--iters", "1", "--rounds", "2", "--workers", "0",
         "--peak-size", "128", "--opts", *TINY_OPTS])
    return bench_train.main(args)


def test_tiny_benchmark_reports_every_field(tiny_result):
    r = tiny_result
    for key in ("original_ms", "ours_ms", "ratio", "epoch1_ms", "achieved_gflops", "peak_share",
                "inference_ms", "projected_ours_h", "projected_original_h", "peak_fp32"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    # 2 rounds of 1 timed step each side, interleaved: (a), (b), (a), (b)
    assert r["steps"] == 2 and len(r["original"]["step_s"]) == 2 and r["rounds"] == 2
    assert r["counted_train"] == r["formula_train"]  # batch 1 on the torch path: exact
    assert r["ratio"] == pytest.approx(r["original_ms"] / r["ours_ms"])
    assert r["ok"] == (r["ratio"] >= bench_train.MIN_RATIO)
    for key in ("peak", "fill_peak"):
        assert r["ours"][key] > 0
    md = r["markdown"]
    assert "speed-up (a) / (b)" in md and f"{r['ratio']:.2f}x" in md and "GFLOP/s" in md
    assert "--iters 1" in md and "--rounds 2" in md and "2 rounds" in md and "VmHWM" in md and "tools/gpu_check.sh" in md


def test_doc_keeps_the_metrics_section(tiny_result, tmp_path):
    doc = tmp_path / "PERFORMANCE.md"
    bench_metrics.write_doc_section(doc, "metrics", "## Metrics\nkept")
    bench_metrics.write_doc_section(doc, "train", tiny_result["markdown"])
    bench_metrics.write_doc_section(doc, "train", tiny_result["markdown"])  # rewrite in place
    text = doc.read_text()
    assert text.count("<!-- train:begin -->") == 1 and "## Metrics\nkept" in text
    assert text.index("<!-- metrics:end -->") < text.index("<!-- train:begin -->")


def test_all_runs_metrics_and_train(monkeypatch, tmp_path):
    calls = []
    for name, module in (("metrics", bench_metrics), ("train", bench_train)):
        monkeypatch.setattr(module, "main", lambda args, n=name: calls.append((n, args.doc)) or
                            {"markdown": f"section {n}", "ok": True})
    doc = tmp_path / "perf.md"
    assert benchmark.main(["all", "--doc", str(doc)]) == 0
    assert [c[0] for c in calls] == ["metrics", "train"]
    assert "section metrics" in doc.read_text() and "section train" in doc.read_text()


def test_rounds_below_one_are_refused():
    with pytest.raises(ValueError, match="--rounds must be at least 1"):
        bench_train.run_benchmark(images=8, batch=4, warmup=1, iters=1, rounds=0, workers=0, peak_size=128,
                                  opts=TINY_OPTS)
