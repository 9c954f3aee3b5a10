"""Dropout for the fast path: the CPU keep mask from 32-bit integer words, and residual + dropout fused.

On CPU, `F.dropout` draws one Bernoulli per element through a serial generator loop, which costs more
than this model's matrix products. Here a fast generator (numpy's SFC64, seeded from torch's CPU
generator) gives one 32-bit word per element, and an element is kept when its word is above a
threshold: the drop probability is p rounded to a multiple of 2**-32 (finer than float32 uniforms).
Seeding torch makes it reproducible. Elsewhere (CUDA, ...) `F.dropout` is used as is.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F


def uses_cpu_masks(x, p, training):
    """Whether dropout of `x` takes this module's CPU path: training, 0 < p < 1, `x` on the CPU.
    Elsewhere dropout is the identity (eval, p = 0) or `F.dropout` (other devices, p = 1)."""
    return training and 0.0 < p < 1.0 and x.device.type == "cpu"


def dropout(x, p, training):
    """Inverted dropout with keep probability 1 - p (rounded as `keep_mask`); F.dropout off the CPU."""
    if uses_cpu_masks(x, p, training):
        return x * keep_mask(x.shape, p, x.dtype).mul_(1.0 / (1.0 - p))
    return F.dropout(x, p, True) if training and p > 0.0 else x


def dropout_add(residual, x, p, training):
    """residual + dropout(x, p, training), fused into one `addcmul` pass on CPU."""
    if uses_cpu_masks(x, p, training):
        return torch.addcmul(residual, x, keep_mask(x.shape, p, x.dtype), value=1.0 / (1.0 - p))
    return residual + dropout(x, p, training)


def keep_mask(shape, p, dtype=torch.bool):
    """Tensor of `shape` and `dtype`: 1 (True) with probability 1 - round(p * 2**32) / 2**32, else 0.

    Each element's 32-bit word comes from numpy's SFC64 generator, seeded by one 64-bit draw of torch's
    global CPU generator, so torch.manual_seed and the saved torch RNG state determine every mask.
    (Filling parts of a mask in parallel threads was tried: the hand-off competes with the OpenMP
    threads that spin after each parallel region, and training got slower.)
    """
    dropped_words = round(p * 2**32)
    if dropped_words >= 2**32:  # the threshold would overflow int32: nothing is kept
        return torch.zeros(shape, dtype=dtype, device="cpu")
    numel = math.prod(shape)
    seed = int(torch.empty((), dtype=torch.int64).random_(0, None))
    words = np.random.SFC64(seed).random_raw((numel + 1) // 2).view(np.int32)[:numel]
    # numpy's SIMD compare is ~2x faster than torch.ge on CPU here; the bool array is shared, not copied.
    keep = torch.from_numpy(np.greater_equal(words, dropped_words - 2**31)).view(shape)
    # bool -> float is a scalar loop on CPU (and so is comparing straight into a float output, or
    # multiplying by a bool tensor): ~10x slower than the vectorised uint8 -> float conversion.
    return keep if dtype == torch.bool else keep.view(torch.uint8).to(dtype)


def relu_keep(x, p):
    """relu(x) * keep, keep ~ Bernoulli(1 - p), WITHOUT the 1 / (1 - p) scale (CPU, training).

    The caller folds the scale into the next linear layer's (small) weight, which saves a pass over
    the (large) FFN activations. The backward needs only the output: it is non-zero exactly where x > 0
    and the element was kept, and the gradient is 1 there and 0 elsewhere.
    """
    return _ReluKeep.apply(x, p)


class _ReluKeep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        # In place on the fresh relu output; multiplying by the uint8 mask needs no float copy of it.
        out = x.clamp_min(0).mul_(keep_mask(x.shape, p).view(torch.uint8))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0), None
