"""Acceptance check: this repository against the ORIGINAL UniAD code (zhiyuanyou/UniAD) as a test oracle.

    python tools/verify_against_original.py --orig /path/to/UniAD [--sizes 224 256] [--batch 2]

Nothing of the original is in this repository: the original is imported at run time from ``--orig``
(a checkout of zhiyuanyou/UniAD; it needs ``einops``, ``tabulate`` and ``easydict``; ``--extra-path DIR``
puts a folder holding any of them on ``sys.path``). Both codes share the top-level package names
``models`` / ``utils`` / ``datasets``, so the original is imported with those ``sys.modules`` entries
swapped out (``original_namespace``) and both run in one process, on CPU, in float32.

The original is run unedited. Two run-time shims let it run on CPU: ``torch.Tensor.cuda`` returns the
tensor itself (it calls ``.cuda()`` in the jitter, the neighbour mask and the ``max`` metric) and
``np.int`` / ``np.float`` exist again (removed in numpy 1.24; used by its ``encode_mask``).

Checks (each row: the largest absolute difference and its tolerance):
1. model: the original ModelHelper (its config file, its ``update_config``, ``pretrained=False``, BN
   statistics and every reconstruction parameter randomised) saved as an original checkpoint, converted
   with ``models.ckpt_convert.convert_file`` and loaded strictly into our ModelHelper (built from
   ``experiments/MVTec-AD/config.yaml``); ``features`` / ``feature_align`` <= 1e-5, ``feature_rec`` /
   ``pred`` <= 1e-4, eval and train mode (dropout 0 on both sides, torch and ``random`` seeded identically
   before each forward so the jitter noise is the same), both ``attn_impl``s, every size in ``--sizes``;
   plus the reconstruction gradients of the MSE loss and the ``save_recon`` files;
2. the seeded initial reconstruction weights (same seed -> bit-identical state_dict), and the
   reconstruction alone for config variants (pre-norm, sine positions, partial / no neighbour mask);
3. metrics: ``utils.eval_helper.performances`` (auc: mean, std, max avg-pool 16, pixel) on random maps
   with ties, normal images and a class whose AUROC is flipped;
4. data: ``CustomDataset`` items (image and mask tensors) for PNG / JPG images of odd sizes.

Rows marked INFO show documented, intended differences (no pass/fail). Exit code 1 if any row FAILs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from easydict import EasyDict  # noqa: E402

OUR_CONFIG = os.path.join(REPO, "experiments", "MVTec-AD", "config.yaml")
SHARED_PACKAGES = ("models", "utils", "datasets")
FEATURE_TOL, REC_TOL, GRAD_TOL = 1e-5, 1e-4, 1e-4


# --------------------------------------------------------------------------------------------- results
@dataclass
class Row:
    """One line of the report: ``diff`` <= ``tol`` passes; ``tol`` None marks an INFO row."""

    item: str
    diff: float
    tol: float | None
    note: str = ""

    @property
    def status(self) -> str:
        if self.tol is None:
            return "INFO"
        return "PASS" if self.diff <= self.tol else "FAIL"


def max_abs(a, b) -> float:
    """Largest |a - b| over tensors / arrays (lists compared element-wise); inf if shapes differ."""
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return float("inf")
        return max(max_abs(x, y) for x, y in zip(a, b))
    a, b = _tensor(a), _tensor(b)
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max()) if a.numel() else 0.0


def _tensor(x) -> torch.Tensor:
    return x.detach().double() if torch.is_tensor(x) else torch.as_tensor(np.asarray(x), dtype=torch.float64)


def print_report(rows: list[Row]) -> None:
    width = max(len(r.item) for r in rows)
    print(f"\n{'check'.ljust(width)} | {'max abs diff':>12} | {'tol':>7} | result")
    print(f"{'-' * width}-|-{'-' * 12}-|-{'-' * 7}-|-------")
    for r in rows:
        tol = "-" if r.tol is None else f"{r.tol:.0e}"
        note = f"  ({r.note})" if r.note else ""
        print(f"{r.item.ljust(width)} | {r.diff:12.3e} | {tol:>7} | {r.status}{note}")
    failed = [r.item for r in rows if r.status == "FAIL"]
    print(f"\n{len(rows)} rows: {sum(r.status == 'PASS' for r in rows)} PASS, {len(failed)} FAIL, "
          f"{sum(r.status == 'INFO' for r in rows)} INFO")


# ------------------------------------------------------------------------- importing the original
class OriginalCode:
    """Imports from the original checkout with its package names swapped into ``sys.modules``."""

    def __init__(self, orig: str, extra_paths: list[str]):
        self.orig = os.path.abspath(orig)
        self.extra_paths = [os.path.abspath(p) for p in extra_paths]
        self._theirs: dict[str, Any] = {}
        for rel in ("models/reconstructions/uniad.py", "utils/eval_helper.py", "datasets/custom_dataset.py"):
            if not os.path.isfile(os.path.join(self.orig, rel)):
                raise FileNotFoundError(f"--orig {orig}: {rel} not found; pass the root of a zhiyuanyou/UniAD checkout")

    @contextlib.contextmanager
    def namespace(self) -> Iterator[None]:
        """Inside: ``import models...`` etc. give the original's modules; ours are restored on exit."""
        ours = _pop_modules()
        saved_path = list(sys.path)
        sys.modules.update(self._theirs)
        sys.path[:] = [self.orig, *self.extra_paths] + [p for p in saved_path if _not_repo(p)]
        try:
            yield
        finally:
            self._theirs = _pop_modules()
            sys.modules.update(ours)
            sys.path[:] = saved_path

    def module(self, name: str):
        with self.namespace():
            return __import__(name, fromlist=["_"])


def _pop_modules() -> dict[str, Any]:
    names = [n for n in sys.modules if n.split(".")[0] in SHARED_PACKAGES]
    return {n: sys.modules.pop(n) for n in names}


def _not_repo(path: str) -> bool:
    return os.path.abspath(path or os.curdir) != REPO


@contextlib.contextmanager
def cpu_shims() -> Iterator[None]:
    """``Tensor.cuda`` -> identity and ``np.int`` / ``np.float`` aliases while the original runs here."""
    saved_cuda = torch.Tensor.cuda
    added = {name: alias for name, alias in (("int", int), ("float", float)) if not hasattr(np, name)}
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    for name, alias in added.items():
        setattr(np, name, alias)
    try:
        yield
    finally:
        torch.Tensor.cuda = saved_cuda
        for name in added:
            delattr(np, name)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


# ------------------------------------------------------------------------------------ 1. the model
def original_config(orig: OriginalCode, size: int, dropout: float, recon_dir: str) -> EasyDict:
    """The original MVTec-AD config after its own update_config, backbone not pretrained."""
    with open(os.path.join(orig.orig, "experiments", "MVTec-AD", "config.yaml"), encoding="utf-8") as f:
        cfg = EasyDict(yaml.safe_load(f))
    cfg.dataset.input_size = [size, size]
    cfg.net[0].kwargs.pretrained = False
    cfg.net[2].kwargs.dropout = dropout
    cfg.net[2].kwargs.save_recon.save_dir = recon_dir
    with orig.namespace():
        from utils.misc_helper import update_config
        return update_config(cfg)


def build_original(orig: OriginalCode, cfg: EasyDict) -> torch.nn.Module:
    with orig.namespace():
        from models.model_helper import ModelHelper
        return ModelHelper(cfg.net).cpu()


def build_ours(size: int, dropout: float, attn_impl: str, recon_dir: str) -> torch.nn.Module:
    from models.model_helper import ModelHelper
    from utils.config_helper import load_config

    opts = ["net.backbone.kwargs.pretrained=False", f"dataset.input_size=[{size},{size}]",
            f"net.reconstruction.kwargs.dropout={dropout}", f"net.reconstruction.kwargs.attn_impl={attn_impl}",
            f"net.reconstruction.kwargs.save_recon.save_dir={recon_dir}"]
    return ModelHelper(load_config(OUR_CONFIG, opts).net)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random BN statistics/affine in the backbone and noise on every reconstruction parameter, so that
    a wrongly mapped or dropped tensor shows (default BN stats 0/1 and zero biases would hide it)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(1 + torch.randn(m.weight.shape, generator=gen) * 0.1)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        for p in model.reconstruction.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)


def save_original_checkpoint(model: torch.nn.Module, cfg: EasyDict, path: str) -> None:
    """What the original's DDP training writes: ``module.``-prefixed keys, EasyDict arch, numpy best."""
    torch.save({"epoch": 7, "arch": cfg.net, "best_metric": np.float64(0.9375),
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": []}}, path)


def transfer(orig_model, cfg, tmp: str, size: int) -> dict:
    """Original model -> original checkpoint file -> convert_file -> our state_dict (checked fields)."""
    from models.ckpt_convert import convert_file
    from utils.checkpoint import load_checkpoint

    src, dst = os.path.join(tmp, f"orig_{size}.pth.tar"), os.path.join(tmp, f"ours_{size}.pth.tar")
    save_original_checkpoint(orig_model, cfg, src)
    convert_file(src, dst, config_path=OUR_CONFIG if size == 224 else None)
    ckpt = load_checkpoint(dst)
    if ckpt["epoch"] != 7 or ckpt["best_metric"] != 0.9375:
        raise AssertionError(f"converted epoch/best_metric {ckpt['epoch']}/{ckpt['best_metric']} != 7/0.9375")
    return ckpt["state_dict"]


def load_ours(model, state_dict) -> torch.nn.Module:
    from utils.checkpoint import load_model_state

    load_model_state(model, state_dict, strict=True, source="the converted original weights")
    return model


def model_inputs(size: int, batch: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    names = [f"bottle/test/crack/{i:03d}.png" for i in range(batch)]
    return {"image": torch.randn((batch, 3, size, size), generator=gen), "clsname": ["bottle"] * batch,
            "filename": names}


def compare_outputs(tag: str, theirs: dict, ours: dict) -> list[Row]:
    scale = float(theirs["feature_align"].abs().max())
    rows = [Row(f"{tag} features", max_abs(theirs["features"], ours["features"]), FEATURE_TOL),
            Row(f"{tag} feature_align", max_abs(theirs["feature_align"], ours["feature_align"]), FEATURE_TOL,
                f"|feature_align| max {scale:.2f}")]
    for key in ("feature_rec", "pred"):
        rows.append(Row(f"{tag} {key}", max_abs(theirs[key], ours[key]), REC_TOL))
    return rows


def eval_rows(tag, orig_model, our_model, inputs, dirs) -> list[Row]:
    orig_model.eval()
    our_model.eval()
    with torch.no_grad(), cpu_shims():
        theirs = orig_model(dict(inputs))
    with torch.no_grad():
        ours = our_model(dict(inputs))
    rows = compare_outputs(f"{tag} eval", theirs, ours)
    return rows + [Row(f"{tag} eval save_recon .npy", _compare_recon_dirs(*dirs), REC_TOL)]


def _compare_recon_dirs(theirs: str, ours: str) -> float:
    found = sorted(os.path.relpath(os.path.join(d, f), theirs) for d, _, fs in os.walk(theirs) for f in fs)
    mine = sorted(os.path.relpath(os.path.join(d, f), ours) for d, _, fs in os.walk(ours) for f in fs)
    if not found or found != mine:
        return float("inf")
    return max(max_abs(np.load(os.path.join(theirs, f)), np.load(os.path.join(ours, f))) for f in found)


def train_rows(tag, orig_model, our_model, inputs, steps: int = 2) -> list[Row]:
    """Train mode (jitter on, dropout 0): outputs per seeded step, and the reconstruction gradients."""
    orig_model.train()
    our_model.train()
    rows = []
    for step in range(steps):
        seed_all(1000 + step)
        with cpu_shims():
            theirs = orig_model(dict(inputs))
        seed_all(1000 + step)
        ours = our_model(dict(inputs))
        rows += compare_outputs(f"{tag} train step {step}", theirs, ours)
        rows.append(_grad_row(f"{tag} train step {step} recon grads (rel.)", orig_model, our_model, theirs, ours))
    return rows


def _grad_row(item, orig_model, our_model, theirs, ours) -> Row:
    """MSE(feature_rec, feature_align) gradients of the reconstruction, max diff / max |grad|."""
    grads = []
    for model, out in ((orig_model, theirs), (our_model, ours)):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(out["feature_rec"], out["feature_align"]).backward()
        grads.append(dict(model.reconstruction.named_parameters()))
    names = sorted(grads[0])
    if names != sorted(grads[1]):
        return Row(item, float("inf"), GRAD_TOL, "parameter names differ")
    scale = max(float(grads[0][n].grad.abs().max()) for n in names)
    diff = max(max_abs(grads[0][n].grad, grads[1][n].grad) for n in names)
    return Row(item, diff / scale, GRAD_TOL, f"max |grad| {scale:.2e}")


def model_checks(orig: OriginalCode, sizes: list[int], batch: int, tmp: str) -> list[Row]:
    rows = []
    for size in sizes:
        for dropout, mode in ((0.1, "eval"), (0.0, "train")):
            rows += _model_checks_at(orig, size, batch, tmp, dropout, mode)
    return rows


def _model_checks_at(orig, size, batch, tmp, dropout, mode) -> list[Row]:
    """One original model (given dropout) against ours with each attn_impl, in one mode."""
    orig_dir = os.path.join(tmp, f"recon_orig_{size}_{mode}")
    cfg = original_config(orig, size, dropout, orig_dir)
    torch.manual_seed(size)
    orig_model = build_original(orig, cfg)
    randomise(orig_model, seed=size)
    state_dict = transfer(orig_model, cfg, tmp, size)
    inputs = model_inputs(size, batch, seed=size + 1)
    rows = []
    for impl in ("fast", "torch"):
        our_dir = os.path.join(tmp, f"recon_ours_{size}_{mode}_{impl}")
        our_model = load_ours(build_ours(size, dropout, impl, our_dir), state_dict)
        tag = f"model {size}px {impl}"
        if mode == "eval":
            rows += eval_rows(tag, orig_model, our_model, inputs, (orig_dir, our_dir))
        else:
            rows += train_rows(tag, orig_model, our_model, inputs)
        print(f"  model {size}px {mode} {impl}: done", flush=True)
    return rows


# ------------------------------------------------------- 2. seeded init and reconstruction variants
def recon_kwargs(**overrides) -> dict:
    """The MVTec-AD reconstruction kwargs at 224 px (after update_config), with ``overrides``."""
    kwargs = dict(inplanes=[272], instrides=[16], feature_size=[14, 14], hidden_dim=256, pos_embed_type="learned",
                  nhead=8, num_encoder_layers=4, num_decoder_layers=4, dim_feedforward=1024, dropout=0.1,
                  activation="relu", normalize_before=False, save_recon=False,
                  feature_jitter=EasyDict(scale=20.0, prob=1.0),
                  neighbor_mask=EasyDict(neighbor_size=[7, 7], mask=[True, True, True]),
                  initializer=EasyDict(method="xavier_uniform"))
    kwargs.update(overrides)
    return kwargs


RECON_VARIANTS = {
    "shipped": {},
    "init normal": {"initializer": None},
    "pre-norm + sine": {"normalize_before": True, "pos_embed_type": "sine"},
    "mask [T,F,T] 5x3": {"neighbor_mask": EasyDict(neighbor_size=[5, 3], mask=[True, False, True])},
    "no mask, gelu": {"neighbor_mask": None, "activation": "gelu"},
}


def build_recon_pair(orig: OriginalCode, kwargs: dict, attn_impl: str, seed: int):
    """Original and our UniAD built after the same torch seed."""
    uniad_orig = orig.module("models.reconstructions.uniad").UniAD
    from models.reconstructions.uniad import UniAD

    torch.manual_seed(seed)
    theirs = uniad_orig(**dict(kwargs))
    torch.manual_seed(seed)
    ours = UniAD(**dict(kwargs), attn_impl=attn_impl)
    return theirs, ours


def init_and_variant_checks(orig: OriginalCode) -> list[Row]:
    rows = []
    for name, overrides in RECON_VARIANTS.items():
        for impl in ("fast", "torch"):
            theirs, ours = build_recon_pair(orig, recon_kwargs(**overrides), impl, seed=3)
            rows.append(_init_row(f"init {name} {impl}: seeded state_dict", theirs, ours))
            theirs, ours = build_recon_pair(orig, recon_kwargs(dropout=0.0, **overrides), impl, seed=4)
            rows += _variant_rows(f"recon {name} {impl}", theirs, ours)
    return rows


def _init_row(item, theirs, ours) -> Row:
    a, b = theirs.state_dict(), ours.state_dict()
    if list(a) != list(b):
        return Row(item, float("inf"), 0.0, f"keys differ: {sorted(set(a) ^ set(b))[:4]}")
    return Row(item, max(max_abs(a[k], b[k]) for k in a), 0.0)


def _variant_rows(tag, theirs, ours) -> list[Row]:
    """Reconstruction alone on random features, eval and seeded train mode (dropout 0)."""
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn(p.shape) * 0.02)
    ours.load_state_dict(theirs.state_dict())
    feats = {"feature_align": torch.randn(2, 272, 14, 14) * 2}
    rows = []
    for training in (False, True):
        theirs.train(training)
        ours.train(training)
        seed_all(7)
        with torch.no_grad(), cpu_shims():
            out_t = theirs(dict(feats))
        seed_all(7)
        with torch.no_grad():
            out_o = ours(dict(feats))
        mode = "train" if training else "eval"
        rows.append(Row(f"{tag} {mode} feature_rec", max_abs(out_t["feature_rec"], out_o["feature_rec"]), REC_TOL))
        rows.append(Row(f"{tag} {mode} pred", max_abs(out_t["pred"], out_o["pred"]), REC_TOL))
    return rows


# --------------------------------------------------------------------------------------- 3. metrics
METRICS_CFG = {"auc": [{"name": "mean"}, {"name": "std"}, {"name": "max", "kwargs": {"avgpool_size": [16, 16]}},
                       {"name": "pixel"}]}


def random_eval_set(seed: int, size: int = 64):
    """fileinfos, float32 preds [N,H,W], uint8 masks: classes with normal and defective images, ties,
    duplicated maps, a class whose scores are inverted (AUROC < 0.5 -> flipped) and one defect only."""
    rng = np.random.default_rng(seed)
    infos, preds, masks = [], [], []
    plan = {"bottle": (6, 5, "plain"), "cable": (5, 6, "ties"), "screw": (7, 4, "inverted"), "tile": (6, 1, "plain")}
    for clsname, (normal, defective, kind) in plan.items():
        first = len(preds)
        for index in range(normal + defective):
            pred, mask = _random_map(rng, size, defect=index >= normal, kind=kind)
            infos.append({"clsname": clsname, "filename": f"{clsname}/test/x/{index:03d}.png"})
            preds.append(pred)
            masks.append(mask)
        if kind == "ties":  # a defective image with a normal image's map: image scores tie across labels
            preds[-1] = preds[first].copy()
    return infos, np.stack(preds), np.stack(masks)


def _random_map(rng, size, defect: bool, kind: str):
    pred = rng.random((size, size)).astype(np.float32)
    mask = np.zeros((size, size), np.uint8)
    if defect:
        y, x = rng.integers(0, size - 12, 2)
        h, w = rng.integers(3, 12, 2)
        mask[y:y + h, x:x + w] = 255
        pred[mask > 0] += np.float32(0.25 * (-1 if kind == "inverted" else 1))
    if kind == "ties":
        pred = np.round(pred * 4) / 4
    return pred.astype(np.float32), mask


def metric_checks(orig: OriginalCode) -> list[Row]:
    from utils.eval_helper import performances

    theirs_fn = orig.module("utils.eval_helper").performances
    infos, preds, masks = random_eval_set(seed=5)
    with cpu_shims():
        theirs = theirs_fn(infos, preds, masks, EasyDict(METRICS_CFG))
    ours = performances(infos, preds, masks, METRICS_CFG)
    rows = [Row(f"metrics {key}", abs(float(theirs[key]) - float(ours.get(key, np.nan))), 1e-9,
                f"{float(theirs[key]):.6f}") for key in sorted(theirs)]
    if set(theirs) != set(ours):
        rows.append(Row("metrics key sets", float("inf"), 0.0, f"differ: {sorted(set(theirs) ^ set(ours))}"))
    return rows + _normal_only_rows(theirs_fn, performances, infos, preds, masks)


def _normal_only_rows(theirs_fn, ours_fn, infos, preds, masks) -> list[Row]:
    """A class with normal images only: AUROC undefined (nan) for it in both; the original's class mean
    then becomes nan, ours averages the classes where it is defined (documented difference)."""
    extra = [{"clsname": "zipper", "filename": f"zipper/test/good/{i:03d}.png"} for i in range(3)]
    preds = np.concatenate([preds, np.random.default_rng(9).random((3, *preds.shape[1:]), np.float32)])
    masks = np.concatenate([masks, np.zeros((3, *masks.shape[1:]), np.uint8)])
    with cpu_shims(), np.errstate(all="ignore"), _quiet_warnings():
        theirs = theirs_fn(infos + extra, preds, masks, EasyDict(METRICS_CFG))
    with _quiet_warnings():
        ours = ours_fn(infos + extra, preds, masks, METRICS_CFG)
    both_nan = all(np.isnan(theirs[k]) and np.isnan(ours[k]) for k in theirs if k.startswith("zipper_"))
    return [Row("metrics normal-only class: zipper_* both nan", 0.0 if both_nan else float("inf"), 0.0),
            Row("metrics normal-only class: mean_pixel_auc", abs(theirs["mean_pixel_auc"] - ours["mean_pixel_auc"])
                if not np.isnan(theirs["mean_pixel_auc"]) else float("nan"), None,
                f"original {theirs['mean_pixel_auc']:.6f}, ours {ours['mean_pixel_auc']:.6f} (ours skips nan classes)")]


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    import logging
    import warnings

    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


# ------------------------------------------------------------------------------------------ 4. data
def write_images(root: str) -> str:
    """Odd-sized PNG / JPG images (RGB, gray, RGBA), PNG and JPG masks, and a meta file; returns its path."""
    rng = np.random.default_rng(11)
    specs = [  # filename, (h, w, channels), label, mask file or None, clsname given
        ("widget/test/crack/000.png", (301, 217, 3), 1, "widget/ground_truth/crack/000_mask.png", False),
        ("widget/test/good/001.jpg", (150, 333, 3), 0, None, True),
        ("widget/test/scratch/002.png", (97, 411, 1), 1, None, False),
        ("gadget/train/good/003.png", (203, 203, 4), 0, None, False),
        ("gadget/test/hole/004.jpg", (260, 190, 3), 1, "gadget/ground_truth/hole/004_mask.png", True),
    ]
    lines = []
    for name, shape, label, maskname, with_cls in specs:
        _write(os.path.join(root, name), _smooth_image(rng, shape))
        meta = {"filename": name, "label": label}
        if maskname:
            _write(os.path.join(root, maskname), _blob_mask(rng, shape[:2]))
            meta["maskname"] = maskname
        if with_cls:
            meta["clsname"] = name.split("/")[0]
        lines.append(json.dumps(meta))
    meta_file = os.path.join(root, "meta.json")
    with open(meta_file, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return meta_file


def _smooth_image(rng, shape):
    h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx[..., None] / 7.0 + np.arange(c)) + np.cos(yy[..., None] / 5.0)) * 60 + 128
    image = base + rng.normal(0, 20, (h, w, c))
    return np.clip(image, 0, 255).astype(np.uint8).squeeze()


def _blob_mask(rng, hw):
    mask = np.zeros(hw, np.uint8)
    cy, cx = rng.integers(10, min(hw) - 10, 2)
    cv2.circle(mask, (int(cx), int(cy)), int(min(hw) // 5), 255, -1)
    return mask


def _write(path: str, array) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, array):
        raise OSError(f"cannot write test image {path}")


def _dataset_cfg(root, meta_file, size, flips: bool) -> dict:
    return {"image_reader": {"type": "opencv", "kwargs": {"image_dir": root, "color_mode": "RGB"}},
            "meta_file": meta_file, "input_size": [size, size], "pixel_mean": [0.485, 0.456, 0.406],
            "pixel_std": [0.229, 0.224, 0.225], "hflip": flips, "vflip": flips, "rotate": False}


def original_dataset(orig: OriginalCode, cfg: dict, training: bool):
    import torchvision.transforms as T

    with orig.namespace():
        from datasets.base_dataset import TestBaseTransform, TrainBaseTransform
        from datasets.custom_dataset import CustomDataset
        from datasets.image_reader import build_image_reader
    size = cfg["input_size"]
    transform = TrainBaseTransform(size, cfg["hflip"], cfg["vflip"], cfg["rotate"]) if training \
        else TestBaseTransform(size)
    return CustomDataset(build_image_reader(cfg["image_reader"]), cfg["meta_file"], training, transform,
                         T.Normalize(mean=cfg["pixel_mean"], std=cfg["pixel_std"]))


def data_checks(orig: OriginalCode, tmp: str) -> list[Row]:
    from datasets.data_builder import build_custom_dataset

    root = os.path.join(tmp, "images")
    meta_file = write_images(root)
    rows = []
    for size, training in ((224, False), (256, False), (224, True)):
        cfg = _dataset_cfg(root, meta_file, size, flips=training)
        theirs, ours = original_dataset(orig, cfg, training), build_custom_dataset(cfg, training)
        tag = f"data {size}px {'train hflip+vflip (seeded)' if training else 'test'}"
        rows += _item_rows(tag, theirs, ours)
    rows.append(_jpg_mask_row(orig, root, tmp))
    return rows


def _item_rows(tag, theirs, ours) -> list[Row]:
    image_diff = mask_diff = 0.0
    fields_equal = len(theirs) == len(ours)
    for index in range(len(theirs)):
        seed_all(50 + index)
        a = theirs[index]
        seed_all(50 + index)
        b = ours[index]
        image_diff = max(image_diff, max_abs(a["image"], b["image"]))
        mask_diff = max(mask_diff, max_abs(a["mask"], b["mask"]))
        fields_equal &= all(a[k] == b[k] for k in ("filename", "height", "width", "label", "clsname"))
    return [Row(f"{tag} image", image_diff, 0.0), Row(f"{tag} mask", mask_diff, 0.0),
            Row(f"{tag} filename/height/width/label/clsname", 0.0 if fields_equal else float("inf"), 0.0)]


def _jpg_mask_row(orig: OriginalCode, root: str, tmp: str) -> Row:
    """A lossy JPG mask: the original keeps values v/255, ours binarises (> 0). Documented difference."""
    mask = _blob_mask(np.random.default_rng(3), (120, 90))
    _write(os.path.join(root, "widget/ground_truth/crack/009_mask.jpg"), mask)
    _write(os.path.join(root, "widget/test/crack/009.png"), _smooth_image(np.random.default_rng(4), (120, 90, 3)))
    meta_file = os.path.join(tmp, "meta_jpg_mask.json")
    with open(meta_file, "w", encoding="utf-8") as f:
        f.write(json.dumps({"filename": "widget/test/crack/009.png", "label": 1,
                            "maskname": "widget/ground_truth/crack/009_mask.jpg"}) + "\n")
    from datasets.data_builder import build_custom_dataset

    cfg = _dataset_cfg(root, meta_file, 224, flips=False)
    a, b = original_dataset(orig, cfg, False)[0], build_custom_dataset(cfg, False)[0]
    return Row("data JPG mask (lossy values)", max_abs(a["mask"], b["mask"]), None,
               "original keeps v/255, ours binarises mask > 0")


# ------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orig", required=True, help="root of a zhiyuanyou/UniAD checkout (imported, not copied)")
    parser.add_argument("--extra-path", action="append", default=[],
                        help="folder with packages the original needs (einops ...); repeatable")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256], help="input sizes for the model check")
    parser.add_argument("--batch", type=int, default=2, help="images per model forward")
    parser.add_argument("--only", choices=["model", "init", "metrics", "data"], nargs="+",
                        default=["data", "metrics", "init", "model"], help="run only these check groups")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    orig = OriginalCode(args.orig, args.extra_path)
    try:  # fail early, before any work, if the original cannot be imported here
        orig.module("models.reconstructions.uniad")
    except ModuleNotFoundError as exc:
        raise SystemExit(f"cannot import the original from {args.orig}: {exc}; install it (pip install "
                         f"{exc.name}) or pass --extra-path DIR with a folder that holds it") from exc
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="verify_orig_") as tmp:
        groups = {"data": lambda: data_checks(orig, tmp), "metrics": lambda: metric_checks(orig),
                  "init": lambda: init_and_variant_checks(orig),
                  "model": lambda: model_checks(orig, args.sizes, args.batch, tmp)}
        for name in args.only:
            print(f"running {name} checks ...", flush=True)
            rows += groups[name]()
    print_report(rows)
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
