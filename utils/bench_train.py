"""Training-speed benchmark: the original training step vs our training epoch, side by side in one run.

(a) the ORIGINAL way: every step runs the whole model on images (the frozen EfficientNet recomputed),
    UniAD with ``attn_impl="torch"`` (``nn.MultiheadAttention``), fp32, AdamW with ``foreach=False``,
    ``clip_grad_norm_`` over all parameters; timed on batches already decoded in memory (which favours
    it: the original also decodes images every step).
(b) OUR way: the real code path, ``utils.engine.train_one_epoch`` over the frozen-feature cache in
    its cached epochs (the first fills the cache and is timed apart), fast attention, the config's
    optimizer from ``build_optimizer``, ``trainer.amp`` / ``trainer.compile`` as configured.
The two sides alternate for ``rounds`` rounds and the medians pool every round, so a change of the
shared machine's speed during the run affects both sides alike.

Also: the transformer's matmul FLOPs per image (formula, cross-checked with ``FlopCounterMode``), the
machine's measured matmul peak and the share of it (b) reaches, inference time of the full model, and
peak memory per phase. Data: a synthetic MVTec-like meta dataset written to a temporary folder.
Used by ``tools/benchmark.py train``; ``run_benchmark`` is the testable core.
"""
from __future__ import annotations

import copy
import datetime
import gc
import json
import logging
import math
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from datasets.data_builder import build_dataloader
from datasets.feature_cache import cached_loaders
from models.model_helper import ModelHelper
from utils.config_helper import load_config
from utils.criterion_helper import build_criterion
from utils.engine import EpochPlan, run_evaluation, train_one_epoch
from utils.optimizer_helper import build_optimizer
from utils.speed_switches import compile_child, resolve_amp

RECIPE_IMAGES = 3629   # MVTec-AD training images (15 classes)
RECIPE_EPOCHS = 1000   # trainer.max_epoch of the original MVTec-AD recipe
MIN_RATIO = 2.0        # acceptance of the speed issue: (a) / (b)
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "MVTec-AD" / "config.yaml"
LOGGER = logging.getLogger("bench_train")


# --------------------------------------------------------------------------------------------- FLOPs

def _mm(rows: int, inner: int, cols: int) -> int:
    """FLOPs of a [rows, inner] x [inner, cols] matrix product (one multiply + one add each)."""
    return 2 * rows * inner * cols


def _dims(rec_kwargs) -> tuple[int, int, int, int, int, int, int]:
    """(tokens L, feature channels C, width E, FFN in F, FFN out F2, encoder layers, decoder layers)."""
    k = rec_kwargs
    tokens = math.prod(k["feature_size"])
    ffn = int(k["dim_feedforward"])
    ffn_out = ffn // 2 if k.get("activation", "relu") == "glu" else ffn  # glu halves linear1's output
    return (tokens, int(k["inplanes"][0]), int(k["hidden_dim"]), ffn, ffn_out,
            int(k["num_encoder_layers"]), int(k["num_decoder_layers"]))


def reconstruction_forward_flops(rec_kwargs) -> int:
    """Matmul FLOPs of ONE image's forward through UniAD as the original computes it.

    ``rec_kwargs``: the reconstruction's constructor kwargs (feature_size, inplanes, hidden_dim,
    dim_feedforward, num_encoder/decoder_layers, activation; ``inplanes`` is what ModelHelper injects). Per attention: the Q, K, V in-projections,
    Q K^T and A V (2 L^2 E over all heads) and out_proj; per layer: its attentions (1 in the encoder,
    2 in the decoder) and the FFN; plus input_proj and output_proj. The neighbour mask is additive,
    so attention stays dense. Element-wise work (softmax, norms, adds) is not counted.
    """
    tokens, channels, width, ffn, ffn_out, n_enc, n_dec = _dims(rec_kwargs)
    attention = (_mm(tokens, width, 3 * width) + 2 * _mm(tokens, width, tokens)
                 + _mm(tokens, width, width))
    feed_forward = _mm(tokens, width, ffn) + _mm(tokens, ffn_out, width)
    projections = _mm(tokens, channels, width) + _mm(tokens, width, channels)
    return projections + n_enc * (attention + feed_forward) + n_dec * (2 * attention + feed_forward)


def reconstruction_train_flops(rec_kwargs) -> int:
    """Forward + backward matmul FLOPs of one image: the backward computes two products per forward
    product (input and weight gradients), except input_proj's input gradient, which autograd skips
    because the features are frozen. (The usual "3 x forward" is 27 MFLOP more for the MVTec config.)"""
    tokens, channels, width = _dims(rec_kwargs)[:3]
    return 3 * reconstruction_forward_flops(rec_kwargs) - _mm(tokens, width, channels)


def counted_flops(module: torch.nn.Module, feature_align: torch.Tensor) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs of ``module`` in train mode on ``feature_align``
    [B, C, h, w], counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmul-family ops)."""
    module.train()
    with FlopCounterMode(display=False) as forward:
        module({"feature_align": feature_align})
    with FlopCounterMode(display=False) as both:
        out = module({"feature_align": feature_align})
        out["feature_rec"].float().sum().backward()
    module.zero_grad(set_to_none=True)
    return forward.get_total_flops(), both.get_total_flops()


# --------------------------------------------------------------------------------- machine measures

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, size: int, dtype: torch.dtype = torch.float32,
                repeat: int = 5) -> float:
    """Best FLOP/s of ``torch.mm`` on two [size, size] ``dtype`` matrices on ``device``."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool, cuBLAS handle
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return _mm(size, size, size) / best


def _proc_status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line: peak memory cannot be measured here")
    return int(match.group(1))


class PeakMemory:
    """Peak memory of the ``with`` block, in bytes: ``peak`` (absolute) and ``delta`` (over the start).

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: the process's peak resident set
    (``VmHWM`` of /proc/self/status), reset at entry by writing 5 to /proc/self/clear_refs (Linux);
    it counts every allocator (numpy, oneDNN scratch pads), unlike tracemalloc.
    """

    def __init__(self, device: torch.device):
        self.device, self.peak, self.delta = device, 0, 0

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self._start = _proc_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _proc_status_kib("VmHWM") * 1024
        self.delta = self.peak - self._start


class IterationClock:
    """Wraps a batch iterable: yields at most ``limit`` batches (its ``len``) and records the wall time
    of each iteration (from one batch's hand-over to the next's, so all the consumer's work counts)."""

    def __init__(self, loader: Iterable, limit: int, device: torch.device):
        self.loader, self.limit, self.device = loader, min(limit, len(loader)), device
        self.stamps: list[float] = []

    def __len__(self) -> int:
        return self.limit

    def __iter__(self) -> Iterator:
        self.stamps = []
        for i, batch in enumerate(self.loader):
            if i == self.limit:
                break
            self._stamp()
            yield batch
        self._stamp()

    def _stamp(self) -> None:
        _sync(self.device)
        self.stamps.append(time.perf_counter())

    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


# ------------------------------------------------------------------------------------ data, config

def write_synthetic_mvtec(root: Path, n_train: int, n_test: int, size: int, seed: int = 0,
                          classes: Sequence[str] = ("bottle", "grid")) -> Path:
    """A tiny MVTec-like meta dataset under ``root``: smooth coloured ``size`` px PNGs, training images
    all good, every other test image with a square defect and its mask; ``train.json`` / ``test.json``."""
    rng = np.random.default_rng(seed)
    records = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            cls = classes[i % len(classes)]
            defective = split == "test" and i % 2 == 1
            records[split].append(_write_image(root, rng, cls, split, i, size, defective))
    for split, recs in records.items():
        (root / f"{split}.json").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def _write_image(root: Path, rng: np.random.Generator, cls: str, split: str, i: int, size: int,
                 defective: bool) -> dict:
    coarse = rng.uniform(40, 215, (6, 6, 3)).astype(np.float32)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    sub = "bad" if defective else "good"
    rec = {"filename": f"{cls}/{split}/{sub}/{i:04d}.png", "label": int(defective), "label_name": sub,
           "clsname": cls}
    if defective:
        side = max(2, size // 8)
        y, x = (int(v) for v in rng.integers(0, size - side, 2))
        image[y:y + side, x:x + side] = 255 - image[y:y + side, x:x + side]
        mask = np.zeros((size, size), np.uint8)
        mask[y:y + side, x:x + side] = 255
        rec["maskname"] = f"{cls}/ground_truth/bad/{i:04d}_mask.png"
        _imwrite(root / rec["maskname"], mask)
    _imwrite(root / rec["filename"], image)
    return rec


def _imwrite(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def benchmark_config(config: str, data_root: Path, batch: int, amp: bool, compile_: bool,
                     workers: Optional[int], opts: Sequence[str] = ()):
    """``config`` loaded with the benchmark's overrides: the synthetic data, ``batch`` per step, no
    pretrained download, no save_recon files, ``trainer.amp`` / ``trainer.compile``; ``opts`` last."""
    base = [f"dataset.image_reader.kwargs.image_dir={data_root}",
            f"dataset.train.meta_file={data_root / 'train.json'}",
            f"dataset.test.meta_file={data_root / 'test.json'}",
            f"dataset.batch_size={batch}", "net.backbone.kwargs.pretrained=False",
            "net.reconstruction.kwargs.save_recon=False", f"trainer.amp={amp}", f"trainer.compile={compile_}"]
    if workers is not None:
        base.append(f"dataset.workers={workers}")
    return load_config(str(config), base + list(opts))


def _reconstruction_kwargs(cfg) -> dict:
    entry = next((e for e in cfg.net if e.name == "reconstruction"), None)
    if entry is None:
        raise ValueError(f"{cfg.config_file}: the benchmark needs a net entry named 'reconstruction'")
    return entry.kwargs


# ---------------------------------------------------------------------------------- (a) the original

def _original_model(cfg, device: torch.device) -> ModelHelper:
    net = copy.deepcopy(cfg.net)
    for entry in net:
        if entry.name == "reconstruction":
            entry.kwargs["attn_impl"] = "torch"
    return ModelHelper(net).to(device)


class OriginalSide:
    """(a): the full model the original way, its AdamW (foreach=False) and clip, on in-memory batches."""

    def __init__(self, cfg, batches: list, device: torch.device):
        torch.manual_seed(cfg.random_seed)
        self.model = _original_model(cfg, device).train()
        self.criterion = build_criterion(cfg.criterion)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, **dict(cfg.trainer.optimizer.kwargs), foreach=False)
        self.clip, self.batches, self.device, self.done = cfg.trainer.get("clip_max_norm"), batches, device, 0

    def run(self, warmup: int, iters: int) -> list:
        """``warmup + iters`` steps on the batches (cycled); returns the seconds of the last ``iters``."""
        times = []
        for _ in range(warmup + iters):
            start = time.perf_counter()
            _original_step(self.model, self.batches[self.done % len(self.batches)], self.criterion,
                           self.optimizer, self.clip)
            _sync(self.device)
            times.append(time.perf_counter() - start)
            self.done += 1
        return times[warmup:]


def _original_step(model, batch, criterion, optimizer, clip) -> None:
    outputs = model(batch)
    loss = sum(criterion(outputs).values())
    optimizer.zero_grad()
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()


# ---------------------------------------------------------------------------------------- (b) ours

class OurSide:
    """(b): the real code path: ``train_one_epoch`` over the frozen-feature cache, fast attention, the
    config's optimizer and ``trainer.amp`` / ``trainer.compile``. Construction runs epoch 1 (which
    fills the cache); ``run()`` times one cached epoch."""

    def __init__(self, cfg, device: torch.device, warmup: int, iters: Optional[int]):
        torch.manual_seed(cfg.random_seed)
        self.model = ModelHelper(cfg.net).to(device)
        self.amp = resolve_amp(cfg.trainer.get("amp", False), device, LOGGER)
        if cfg.trainer.get("compile", False):
            compile_child(self.model, "reconstruction", LOGGER)
        self.train_loader, self.val_loader = build_dataloader(cfg.dataset, False, seed=cfg.random_seed,
                                                              pin_memory=device.type == "cuda")
        optimizer = build_optimizer(cfg.trainer.optimizer, self.model, self.model.trainable_names)
        self.train_iter, _, start = cached_loaders(cfg, self.model, self.train_loader, None,
                                                   SimpleNamespace(device=device), LOGGER)
        if start is None:
            raise RuntimeError(f"{cfg.config_file}: the feature cache is off for this config (see the "
                               "'feature cache off' reason in the log), so there is no cached epoch to time")
        _check_warmup(warmup, len(self.train_iter))
        self.runner = _EpochRunner(self.model, build_criterion(cfg.criterion), optimizer, cfg.trainer, start, self.amp)
        self.device, self.warmup, self.epoch = device, warmup, 1
        self.limit = len(self.train_iter) if iters is None else warmup + iters
        with PeakMemory(device) as fill_memory:
            self.epoch1_s = self.runner(self.train_iter, 0, device)
        self.fill_peak, self.fill_delta = fill_memory.peak, fill_memory.delta

    def run(self) -> list:
        """One cached epoch; returns the seconds of its iterations after the warm-up ones."""
        self.train_loader.sampler.set_epoch(self.epoch)
        clock = IterationClock(self.train_iter, self.limit, self.device)
        self.runner(clock, self.epoch, self.device)
        self.epoch += 1
        return clock.durations()[self.warmup:]


def _check_warmup(warmup: int, iterations: int) -> None:
    if warmup >= iterations:
        raise ValueError(f"an epoch has {iterations} iterations (--images / --batch), not more than "
                         f"--warmup {warmup}: raise --images or lower --warmup")


class _EpochRunner:
    """Runs one ``train_one_epoch`` (epoch index given) and returns its wall seconds."""

    def __init__(self, model, criterion, optimizer, trainer, start: str, amp: bool):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.trainer, self.start, self.amp = trainer, start, amp

    def __call__(self, loader, epoch: int, device: torch.device) -> float:
        plan = EpochPlan(epoch, epoch + 1, print_freq=len(loader), tb_freq=len(loader),
                         clip_max_norm=self.trainer.get("clip_max_norm"), model_start=self.start, amp=self.amp)
        begin = time.perf_counter()
        train_one_epoch(self.model, loader, self.criterion, self.optimizer, plan, LOGGER)
        _sync(device)
        return time.perf_counter() - begin


def time_inference(model, batches: list, criterion, device: torch.device, amp: bool) -> dict:
    """Eval forward of the full model (images in) through ``run_evaluation``: the first batch warms
    up, the rest are timed. Returns ms_per_img and the peaks."""
    if len(batches) < 2:
        raise ValueError("inference timing needs at least 2 test batches (1 warm-up)")
    run_evaluation(model, batches[:1], criterion, amp=amp)
    images = sum(len(b["filename"]) for b in batches[1:])
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        run_evaluation(model, batches[1:], criterion, amp=amp)
        _sync(device)
        seconds = time.perf_counter() - start
    return {"ms_per_img": 1000 * seconds / images, "peak": memory.peak, "delta": memory.delta}


# ------------------------------------------------------------------------------------------ the run

def run_benchmark(config: str = str(DEFAULT_CONFIG), images: int = 64, batch: int = 8, warmup: int = 2,
                  iters: Optional[int] = None, device: Optional[str] = None, amp: bool = False,
                  compile_: bool = False, workers: Optional[int] = None, peak_size: Optional[int] = None,
                  opts: Sequence[str] = (), rounds: int = 3) -> dict:
    """The whole benchmark in one process; returns the numbers (see ``summarize``)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    warning = load_warning() if dev.type == "cpu" else None
    if warning:
        print(f"WARNING: {warning}", flush=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        cfg = benchmark_config(config, Path(tmp), batch, amp, compile_, workers, opts)
        write_synthetic_mvtec(Path(tmp), images, 3 * batch, cfg.dataset.input_size[0])
        raw = _measure(cfg, dev, warmup, iters, peak_size, rounds)
    raw.update(config=str(config), images=images, batch=batch, warmup=warmup, device=str(dev), rounds=rounds,
               amp_requested=amp, compile=compile_, load_before=load_before, load_after=os.getloadavg())
    return summarize(raw)


def _measure(cfg, device: torch.device, warmup: int, iters: Optional[int], peak_size: Optional[int],
             rounds: int) -> dict:
    """Peak matmul, then ``rounds`` alternations of (a) steps and (b) epochs (so a drift of the
    machine's speed hits both sides alike), the FLOP count and inference, in this process."""
    if rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {rounds}")
    peak_size = peak_size or (8192 if device.type == "cuda" else 2048)
    raw = {"peak_fp32": _phase("matmul peak", matmul_peak, device, peak_size), "peak_size": peak_size}
    batches = _image_batches(cfg)
    _check_warmup(warmup, len(batches))
    timed = len(batches) - warmup if iters is None else min(iters, len(batches) - warmup)
    original = _phase("(a) set-up", OriginalSide, cfg, batches, device)
    ours = _phase("(b) set-up and epoch 1 (cache fill)", OurSide, cfg, device, warmup, iters)
    a_steps, b_steps, memory = [], [], {}
    for r in range(rounds):
        with PeakMemory(device) as memory["a"]:
            a_steps += _phase(f"(a) original steps, round {r + 1}/{rounds}", original.run, warmup, timed)
        with PeakMemory(device) as memory["b"]:
            b_steps += _phase(f"(b) our cached epoch, round {r + 1}/{rounds}", ours.run)
    reconstruction = original.model.reconstruction
    rec_kwargs = {**_reconstruction_kwargs(cfg), "inplanes": reconstruction.get_outplanes()}
    feats = torch.randn(1, rec_kwargs["inplanes"][0], *rec_kwargs["feature_size"], device=device)
    raw["counted_fwd"], raw["counted_train"] = _phase("FLOP count", counted_flops, reconstruction, feats)
    del original, batches, reconstruction
    raw["peak_bf16"] = matmul_peak(device, peak_size, torch.bfloat16) if ours.amp else None
    raw["inference"] = _phase("inference", time_inference, ours.model, list(ours.val_loader),
                              build_criterion(cfg.criterion), device, ours.amp)
    raw.update(original={"step_s": a_steps, "peak": memory["a"].peak, "delta": memory["a"].delta},
               ours={"step_s": b_steps, "epoch1_s": ours.epoch1_s, "epoch1_images": len(ours.train_loader.dataset),
                     "peak": memory["b"].peak, "delta": memory["b"].delta, "fill_peak": ours.fill_peak,
                     "fill_delta": ours.fill_delta, "amp": ours.amp},
               formula_fwd=reconstruction_forward_flops(rec_kwargs),
               formula_train=reconstruction_train_flops(rec_kwargs),
               input_size=list(cfg.dataset.input_size), clip=cfg.trainer.get("clip_max_norm"))
    return raw


def _phase(name: str, fn, *args):
    """``fn(*args)``, printing how long the phase took (the run takes minutes on 2 cores)."""
    start = time.perf_counter()
    result = fn(*args)
    print(f"  {name}: {time.perf_counter() - start:.1f} s", flush=True)
    return result


def _image_batches(cfg) -> list:
    """The training batches as the image loader gives them (decoded, in memory), in epoch-0 order."""
    train_loader, _ = build_dataloader(cfg.dataset, False, seed=cfg.random_seed)
    return list(train_loader)


def _ms_per_img(step_s: list, batch: int) -> tuple[float, float]:
    """(median, mean) milliseconds per image over per-step seconds of ``batch`` images."""
    return 1000 * statistics.median(step_s) / batch, 1000 * statistics.fmean(step_s) / batch


def summarize(raw: dict) -> dict:
    """Derived numbers: ms/img of both sides (median and mean), ratio (a)/(b) of the medians, FLOPs,
    achieved GFLOP/s and share of peak, epoch-1 cost, projections of the recipe, memory in MiB."""
    batch, ours, original = raw["batch"], raw["ours"], raw["original"]
    out = dict(raw)
    out["original_ms"], out["original_mean_ms"] = _ms_per_img(original["step_s"], batch)
    out["ours_ms"], out["ours_mean_ms"] = _ms_per_img(ours["step_s"], batch)
    out["ratio"] = out["original_ms"] / out["ours_ms"]
    out["steps"] = len(ours["step_s"])
    out["epoch1_ms"] = 1000 * ours["epoch1_s"] / ours["epoch1_images"]
    out["fill_extra_ms"] = out["epoch1_ms"] - out["ours_mean_ms"]  # what epoch 1 costs beyond a cached epoch
    out["train_gflop"] = raw["formula_train"] / 1e9
    out["achieved_gflops"] = raw["formula_train"] / out["ours_ms"] * 1e3 / 1e9
    peak = raw["peak_bf16"] or raw["peak_fp32"]
    out["peak_share"] = out["achieved_gflops"] * 1e9 / peak
    out["inference_ms"] = raw["inference"]["ms_per_img"]
    out["projected_ours_h"] = (RECIPE_EPOCHS * RECIPE_IMAGES * out["ours_ms"]
                               + RECIPE_IMAGES * max(out["fill_extra_ms"], 0.0)) / 1000 / 3600
    out["projected_original_h"] = RECIPE_EPOCHS * RECIPE_IMAGES * out["original_ms"] / 1000 / 3600
    return out


# ------------------------------------------------------------------------------------ report, CLI

def machine_line(device: str) -> str:
    """CPU model (/proc/cpuinfo), cores and torch threads, GPU name when on CUDA, torch and Python."""
    match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    cpu = match.group(1).strip() if match else platform.processor() or "unknown CPU"
    gpu = f", GPU {torch.cuda.get_device_name(torch.device(device))}" if device.startswith("cuda") else ""
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    return (f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads, OMP_WAIT_POLICY "
            f"{wait}){gpu}, torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}")


def load_warning() -> Optional[str]:
    """A warning when the machine is busier than its cores and OpenMP threads spin-wait: a descheduled
    peer then stalls every parallel region (measured here: the backbone 10x slower), which inflates (a)."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= cores or os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return None
    return (f"load average {load:.1f} on {cores} cores: run with OMP_WAIT_POLICY=PASSIVE (set before "
            "Python starts) or on a quiet machine, or the spin-waiting OpenMP threads distort the times")


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _load(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def to_markdown(r: dict, command: str) -> str:
    """The PERFORMANCE.md section for a ``run_benchmark`` result."""
    unit = "fp32" if r["peak_bf16"] is None else "bf16"
    peak = r["peak_bf16"] or r["peak_fp32"]
    o, b = r["original"], r["ours"]
    lines = [
        "## Training: the original step vs our epoch", "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line(r['device'])}, device `{r['device']}`  ",
        f"Date: {datetime.date.today().isoformat()}; load average before {_load(r['load_before'])}, "
        f"after {_load(r['load_after'])} (shared machine: other jobs ran at the same time)", "",
        f"Synthetic MVTec-like data: {r['images']} training images at "
        f"{r['input_size']} px, batch {r['batch']}; {r['rounds']} rounds, each (a) {r['warmup']} warm-up + "
        f"{r['steps'] // r['rounds']} timed steps then (b) one cached epoch ({r['warmup']} untimed + "
        f"{r['steps'] // r['rounds']} timed iterations); medians over all rounds (means in brackets).", "",
        "| measured in one run | value |", "| --- | --- |",
        f"| (a) original step: backbone every step, `nn.MultiheadAttention`, fp32, AdamW foreach=False, "
        f"clip {r['clip']} | {r['original_ms']:.1f} ms/img ({r['original_mean_ms']:.1f}) |",
        f"| (b) our cached epochs: `train_one_epoch` on the feature cache, fast attention, config optimizer"
        f"{', bf16 autocast' if b['amp'] else ''}{', compiled' if r['compile'] else ''} | "
        f"{r['ours_ms']:.1f} ms/img ({r['ours_mean_ms']:.1f}) |",
        f"| **speed-up (a) / (b)** (acceptance >= {MIN_RATIO}) | **{r['ratio']:.2f}x** |",
        f"| (b) epoch 1: decode + backbone once per image (cache fill) + training | "
        f"{b['epoch1_s']:.1f} s = {r['epoch1_ms']:.1f} ms/img (+{r['fill_extra_ms']:.1f} over a cached epoch) |",
        f"| transformer matmul FLOPs per image, forward + backward (formula / FlopCounterMode) | "
        f"{r['train_gflop']:.3f} / {r['counted_train'] / 1e9:.3f} GFLOP (forward {r['formula_fwd'] / 1e9:.3f}) |",
        f"| {unit} matmul peak, `torch.mm` {r['peak_size']}x{r['peak_size']}, best of 5 | {peak / 1e9:,.1f} GFLOP/s |",
        f"| (b) achieved, share of that peak | {r['achieved_gflops']:,.1f} GFLOP/s, **{r['peak_share']:.0%}** |",
        f"| inference: eval forward of the full model, batch {r['batch']} | {r['inference_ms']:.1f} ms/img |",
        f"| peak memory {_memory_kind(r['device'])}: (a) steps / (b) epoch 1 / (b) cached epoch / inference | "
        f"{_mib(o['peak'])} / {_mib(b['fill_peak'])} / {_mib(b['peak'])} / {_mib(r['inference']['peak'])} |",
        f"| ... of which above the phase's start | {_mib(o['delta'])} / {_mib(b['fill_delta'])} / "
        f"{_mib(b['delta'])} / {_mib(r['inference']['delta'])} |",
        f"| projected {RECIPE_EPOCHS}-epoch MVTec-AD recipe ({RECIPE_IMAGES:,} images), one process here: "
        f"ours / original | {r['projected_ours_h']:,.1f} h / {r['projected_original_h']:,.1f} h |", "",
    ]
    return "\n".join(lines + _notes(r))


def _memory_kind(device: str) -> str:
    return "(torch.cuda.max_memory_allocated)" if device.startswith("cuda") else "(process VmHWM)"


def _notes(r: dict) -> list:
    notes = [
        "How it is measured (`utils/bench_train.py`): (a) runs the full model on batches already",
        "decoded in memory (the original also decodes every step, so (a) is flattered); (b) is the real",
        "code path, timed per iteration from batch hand-over to hand-over inside the epoch. FLOPs count",
        "every Linear/in_proj/out_proj product, Q K^T and A V per layer (the original's arithmetic: the",
        "fast path projects the shared decoder queries once per batch and does a little less); the",
        "backward is two products per forward product, minus input_proj's input gradient (frozen",
        "features). The projection is one process on this device: 1000 epochs x 3,629 images x (b),",
        "plus the one-off extra of the cache fill. Ratios are measured in one process, the sides",
        "alternating round by round; absolute times on this shared machine vary with load.", "",
    ]
    if r["device"].startswith("cuda"):
        return notes
    return notes + [
        "GPU: not measured here (no GPU was lent to the session that wrote this). On a machine with",
        "one or more GPUs, `bash tools/gpu_check.sh` runs this benchmark on cuda at batch 8 in fp32 and",
        "with `--amp` (bf16), the 2-GPU nccl training path when there are 2+ GPUs, and prints the step",
        "time and the projected wall time of the recipe; its markdown lands in `gpu_check_out/`.", "",
    ]


def add_arguments(parser) -> None:
    """CLI options of ``tools/benchmark.py train``."""
    parser.add_argument("--config", default=str(DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[2])),
                        help="experiment config (pretrained weights are switched off: no network)")
    parser.add_argument("--images", type=int, default=64, help="synthetic training images (one epoch)")
    parser.add_argument("--batch", type=int, default=8, help="images per step (both sides)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each side")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed steps (default and at most: the rest of the epoch after --warmup)")
    parser.add_argument("--device", default=None, help="cpu / cuda / cuda:1 (default: cuda when available)")
    parser.add_argument("--amp", action="store_true", help="trainer.amp=true for (b) (bf16 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="trainer.compile=true for (b)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the config's)")
    parser.add_argument("--peak-size", type=int, default=None, help="matmul side for the peak (2048 CPU, 8192 GPU)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternations of (a) steps and (b) epochs; medians pool all rounds")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")


def _command(args) -> str:
    parts = [f"python tools/benchmark.py train --config {args.config} --images {args.images} "
             f"--batch {args.batch} --warmup {args.warmup} --rounds {args.rounds}"]
    parts += [f"--iters {args.iters}"] if args.iters is not None else []
    parts += [f"--device {args.device}"] if args.device else []
    parts += ["--amp"] if args.amp else []
    parts += ["--compile"] if args.compile else []
    parts += [f"--workers {args.workers}"] if args.workers is not None else []
    parts += ["--opts " + " ".join(args.opts)] if args.opts else []
    return " ".join(parts)


def main(args) -> dict:
    """Run, print and check the ratio against ``MIN_RATIO``; returns the result + ``markdown``."""
    result = run_benchmark(args.config, args.images, args.batch, args.warmup, args.iters, args.device,
                           args.amp, args.compile, args.workers, args.peak_size, args.opts, args.rounds)
    print(f"(a) original {result['original_ms']:.1f} ms/img | (b) ours {result['ours_ms']:.1f} ms/img | "
          f"ratio {result['ratio']:.2f}x | epoch 1 {result['epoch1_ms']:.1f} ms/img | "
          f"{result['achieved_gflops']:.1f} GFLOP/s = {result['peak_share']:.0%} of peak | "
          f"inference {result['inference_ms']:.1f} ms/img | step at batch {result['batch']}: "
          f"{result['ours_ms'] * result['batch']:.1f} ms | projected recipe {result['projected_ours_h']:.1f} h "
          f"(original {result['projected_original_h']:.1f} h)")
    result["markdown"] = to_markdown(result, _command(args))
    result["ok"] = result["ratio"] >= MIN_RATIO
    if not result["ok"]:
        print(f"FAILED: the speed-up (a)/(b) must be at least {MIN_RATIO}x")
    return result
