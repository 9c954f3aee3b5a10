"""Frozen-feature cache: compute ``feature_align`` once per image, then train the reconstruction from it.

When every module before the reconstruction is frozen (eval mode, no grad) and nothing augments the
image, ``feature_align`` is a fixed function of each image. The first pass over a loader runs the
frozen modules as usual and stores their output per dataset index; every later pass skips image
decoding and the backbone, and yields the same values in the same order. The trainer then starts the
model at the reconstruction. Training with the cache gives the same weights as without it.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator, Optional

import torch
from torch import nn

META_KEYS = ("filename", "clsname", "height", "width", "label", "mask")


class FeatureCacheLoader:
    """Wraps a DataLoader; yields ``{"feature_align": [B,C,h,w], <meta keys>}`` batches.

    The order of every pass is the loader's sampler order (call ``sampler.set_epoch`` before each
    epoch as usual). ``encode(batch) -> feature_align`` runs the frozen modules; it is called only
    while the cache is being filled. ``keep_meta`` names the batch keys to keep (masks for evaluation).
    """

    def __init__(self, loader, encode, dtype: torch.dtype, device: torch.device,
                 keep_meta: tuple = ()):
        self.loader, self.encode = loader, encode
        self.dtype, self.device, self.keep_meta = dtype, device, keep_meta
        self.sampler = loader.sampler
        self.batch_size = loader.batch_size
        self.store: Optional[torch.Tensor] = None
        self.meta: dict = {}
        self.filled: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def complete(self) -> bool:
        return self.filled is not None and bool(self.filled.all())

    def __iter__(self) -> Iterator[dict]:
        order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        if self.complete:
            yield from self._replay(order)
        else:
            yield from self._fill(order)

    def _fill(self, order: torch.Tensor) -> Iterator[dict]:
        start = 0
        for batch in self.loader:
            idx = order[start:start + len(batch["filename"])]
            start += len(idx)
            with torch.no_grad():
                feats = self.encode(batch)
            self._put(idx, feats, batch)
            out = {k: batch[k] for k in self.keep_meta if k in batch}
            out["feature_align"] = feats
            yield out

    def _put(self, idx: torch.Tensor, feats: torch.Tensor, batch: dict) -> None:
        if self.store is None:
            n = len(self.loader.dataset)
            self.store = torch.empty((n, *feats.shape[1:]), dtype=self.dtype, device=self.device)
            self.filled = torch.zeros(n, dtype=torch.bool)
        self.store[idx.to(self.device)] = feats.detach().to(self.device, self.dtype)
        self.filled[idx] = True
        for k in self.keep_meta:
            if k in batch:
                values = batch[k]
                slot = self.meta.setdefault(k, {})
                for j, i in enumerate(idx.tolist()):
                    slot[i] = values[j]

    def _replay(self, order: torch.Tensor) -> Iterator[dict]:
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            out = {"feature_align": self.store[idx.to(self.device)].float()}
            for k, slot in self.meta.items():
                values = [slot[i] for i in idx.tolist()]
                out[k] = torch.stack(values) if torch.is_tensor(values[0]) else values
            yield out


def cache_disabled_reason(cfg, model: nn.Module, start: str) -> Optional[str]:
    """Why the cache would give other results than the plain path (None when it is valid)."""
    fc = cfg.trainer.get("feature_cache") or {}
    if fc.get("enabled", True) is False:
        return "trainer.feature_cache.enabled is false"
    if start not in model.order:
        return f"the model has no '{start}' module"
    upstream = model.order[:model.order.index(start)]
    # A module that is not frozen but has no parameters or buffers (the MFCN neck) is a fixed function.
    unfrozen = [n for n in upstream if n not in model.frozen_layers and _has_state(getattr(model, n))]
    if unfrozen:
        return f"module(s) {unfrozen} before the reconstruction are trained"
    train = cfg.dataset.get("train") or {}
    augs = [k for k in ("hflip", "vflip", "rotate") if train.get(k)]
    if train.get("colorjitter") or cfg.dataset.get("colorjitter"):
        augs.append("colorjitter")
    if augs:
        return f"training augmentation ({', '.join(augs)}) changes the images every epoch"
    return None


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(n_images: int, feature_shape: tuple, dtype: torch.dtype, device: torch.device,
               max_gb: Optional[float]) -> None:
    """Refuse (before training starts) a cache that would not fit; the message says how to proceed."""
    need = n_images * int(torch.tensor(feature_shape).prod()) * torch.empty((), dtype=dtype).element_size()
    limit = max_gb * 1e9 if max_gb else 0.8 * _available_bytes(device)
    if need > limit:
        raise MemoryError(
            f"the feature cache needs {need / 1e9:.2f} GB on {device} for {n_images} images of "
            f"{list(feature_shape)} ({dtype}), more than the {limit / 1e9:.2f} GB allowed; set "
            "trainer.feature_cache.dtype=float16 to halve it, raise trainer.feature_cache.max_gb, or "
            "disable it with --opts trainer.feature_cache.enabled=false")


def _feature_shape(cfg, model: nn.Module, start: str) -> tuple:
    entry = next(e for e in cfg.net if e.name == start)
    size = entry.kwargs.get("feature_size")
    channels = sum(getattr(model, start).get_outplanes()) if hasattr(getattr(model, start), "get_outplanes") else None
    if size is None or channels is None:
        raise ValueError(f"cannot size the feature cache: net.{start} has no feature_size / inplanes")
    return (channels, *size)


def cached_loaders(cfg, model: nn.Module, train_loader, val_loader, dist, logger: logging.Logger,
                   start: str = "reconstruction"):
    """Return ``(train_iterable, val_iterable, model_start)``: cached where valid, else the loaders."""
    reason = cache_disabled_reason(cfg, model, start)
    if reason:
        logger.info("feature cache off: %s", reason)
        return train_loader, val_loader, None
    fc = cfg.trainer.get("feature_cache") or {}
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(
        fc.get("dtype", "float32"))
    if dtype is None:
        raise ValueError(f"trainer.feature_cache.dtype must be float32, float16 or bfloat16, got {fc.get('dtype')!r}")
    shape = _feature_shape(cfg, model, start)
    sizes = [len(loader.sampler) for loader in (train_loader, val_loader) if loader is not None]
    check_fits(sum(sizes), shape, dtype, dist.device, fc.get("max_gb"))

    def encode(batch: dict) -> torch.Tensor:
        return model(batch, end=start)["feature_align"]

    train = FeatureCacheLoader(train_loader, encode, dtype, dist.device) if train_loader is not None else None
    val = (FeatureCacheLoader(val_loader, encode, dtype, dist.device, keep_meta=META_KEYS)
           if val_loader is not None else None)
    logger.info("feature cache on (%s, %s): features of %s computed once per image", dtype, dist.device, list(shape))
    return train, val, start
