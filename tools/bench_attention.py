"""Training-step speed of the UniAD reconstruction: attn_impl "torch" (the original path) vs "fast".

    python tools/bench_attention.py [--batch 8] [--threads 2] [--reps 8] [--dropout 0.1] [--mode train]
        [--impls torch,fast,fast-numpy]

"fast-numpy" is the fast path with the fused C dropout kernels switched off (numpy keep masks and
separate torch ops), to measure what the kernels bring on CPU.

Builds the MVTec-AD reconstruction (272 channels, 14x14 tokens, 256 wide, 8 heads, 4+4 layers,
FFN 1024) once per implementation with the same weights, then times forward + MSE loss + backward
(train mode: jitter and dropout on, as in training) with the implementations interleaved, so a
machine that slows down mid-run slows both alike. Reports, per implementation, the best and median
wall time and process CPU time per step, the matrix-multiply FLOPs of one step (counted by
torch.utils.flop_counter), the FLOP rate, the share of a GEMM peak measured in the same run, and the
torch/fast ratio. Shared machines are noisy: compare ratios from one run, not absolute times.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.reconstructions import UniAD, fused_kernels  # noqa: E402  (needs ROOT on sys.path)

KERNELS_OFF = "fast-numpy"  # an --impls name: attn_impl "fast" with fused_kernels.disabled()

MVTEC_RECONSTRUCTION = dict(
    inplanes=[272], instrides=[16], feature_size=[14, 14], feature_jitter={"scale": 20.0, "prob": 1.0},
    neighbor_mask={"neighbor_size": [7, 7], "mask": [True, True, True]}, hidden_dim=256, pos_embed_type="learned",
    save_recon=False, initializer={"method": "xavier_uniform"}, nhead=8, num_encoder_layers=4, num_decoder_layers=4,
    dim_feedforward=1024, activation="relu", normalize_before=False,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--reps", type=int, default=8, help="timed steps per implementation")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--mode", choices=["train", "eval"], default="train",
                        help="train: forward + loss + backward; eval: no-grad forward")
    parser.add_argument("--impls", default="torch,fast", help="comma-separated attn_impl values")
    return parser.parse_args(argv)


def build_models(impls, dropout, train):
    models = {}
    for impl in impls:
        torch.manual_seed(0)
        attn_impl = "fast" if impl == KERNELS_OFF else impl
        models[impl] = UniAD(**MVTEC_RECONSTRUCTION, dropout=dropout, attn_impl=attn_impl).train(train)
    return models


def make_step(model, batch, train, kernels=True):
    """One step as in training (forward, MSE to the clean features, backward), or a no-grad forward;
    kernels=False runs it with the fused CPU kernels switched off."""
    def step():
        if not kernels:
            with fused_kernels.disabled():
                return plain_step()
        return plain_step()

    def plain_step():
        if not train:
            with torch.no_grad():
                return model(batch)
        model.zero_grad(set_to_none=True)
        out = model(batch)
        F.mse_loss(out["feature_rec"], out["feature_align"]).backward()
        return out
    return step


def step_flops(step):
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def gemm_peak(reps=20, size=1024):
    """Best FLOP rate of a square fp32 GEMM (the 'matmul peak' of this machine right now)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = min(_timed(lambda: a @ b)[0] for _ in range(reps))
    return 2 * size**3 / best


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def time_interleaved(steps, reps):
    """{name: [(wall, cpu), ...]}, the order of implementations alternating every repetition."""
    for step in steps.values():
        step()  # warm-up
    names, times = list(steps), {name: [] for name in steps}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            times[name].append(_timed(steps[name]))
    return times


def report(times, flops, peak, batch):
    width = max(6, *(len(name) for name in times))
    lines = [f"{'impl':{width}s} {'wall best':>10s} {'wall med':>10s} {'cpu best':>10s} {'cpu med':>10s} "
             f"{'ms/img':>8s} {'GFLOP/s':>8s} {'% peak':>7s}"]
    for name, samples in times.items():
        wall, cpu = [s[0] for s in samples], [s[1] for s in samples]
        rate = flops[name] / min(wall)
        lines.append(f"{name:{width}s} {min(wall) * 1e3:10.0f} {statistics.median(wall) * 1e3:10.0f} "
                     f"{min(cpu) * 1e3:10.0f} {statistics.median(cpu) * 1e3:10.0f} {min(wall) * 1e3 / batch:8.1f} "
                     f"{rate / 1e9:8.1f} {100 * rate / peak:7.1f}")
    for slow in ("torch", KERNELS_OFF):
        if {slow, "fast"} <= set(times):
            ratio = {kind: min(s[i] for s in times[slow]) / min(s[i] for s in times["fast"])
                     for i, kind in enumerate(("wall", "cpu"))}
            lines.append(f"speed-up {slow}/fast (best): wall {ratio['wall']:.2f}x, cpu {ratio['cpu']:.2f}x")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    train = args.mode == "train"
    impls = args.impls.split(",")
    models = build_models(impls, args.dropout, train)
    batch = {"feature_align": torch.randn(args.batch, 272, 14, 14)}
    steps = {impl: make_step(model, batch, train, kernels=impl != KERNELS_OFF) for impl, model in models.items()}
    flops = {impl: step_flops(step) for impl, step in steps.items()}
    peak = gemm_peak()
    times = time_interleaved(steps, args.reps)
    print(f"UniAD reconstruction, batch {args.batch}, {args.mode}, dropout {args.dropout}, {args.threads} threads, "
          f"{args.reps} reps; GEMM peak now {peak / 1e9:.0f} GFLOP/s; "
          f"matmul FLOPs/step: " + ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in flops.items()))
    print(report(times, flops, peak, args.batch))


if __name__ == "__main__":
    main()
