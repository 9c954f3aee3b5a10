"""tools/bench_attention.py: the kernels-off variant really runs without the fused kernels; the report."""
import torch

from models.reconstructions import fused_kernels
from tools import bench_attention


class _Probe(torch.nn.Module):
    """Records whether the fused kernels were available during each forward."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.saw_kernels = []

    def forward(self, batch):
        self.saw_kernels.append(fused_kernels.library() is not None)
        return {"feature_rec": batch["feature_align"] * self.weight, "feature_align": batch["feature_align"]}


def test_kernels_off_step_runs_without_the_kernels_and_on_step_with_them():
    probe = _Probe()
    batch = {"feature_align": torch.randn(2, 3)}
    bench_attention.make_step(probe, batch, train=True, kernels=False)()
    bench_attention.make_step(probe, batch, train=True, kernels=True)()
    assert probe.saw_kernels == [False, fused_kernels.library() is not None]
    assert probe.weight.grad is not None


def test_report_has_both_ratios():
    times = {"torch": [(0.4, 0.8)], "fast": [(0.1, 0.2)], bench_attention.KERNELS_OFF: [(0.2, 0.3)]}
    flops = {name: 1e9 for name in times}
    text = bench_attention.report(times, flops, peak=1e11, batch=2)
    assert "speed-up torch/fast (best): wall 4.00x, cpu 4.00x" in text
    assert "speed-up fast-numpy/fast (best): wall 2.00x, cpu 1.50x" in text
