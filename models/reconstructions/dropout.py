"""Dropout for the fast path on CPU: keep masks from 32-bit words, fused with the ops around them.

On CPU, `F.dropout` draws one Bernoulli per element through a serial generator loop, which costs more
than this model's matrix products. Here an element is kept when its 32-bit random word is at or above
round(p * 2**32): the drop probability is p rounded to a multiple of 2**-32 (finer than float32
uniforms). Each mask is determined by one 64-bit seed drawn from torch's global CPU generator, so
torch.manual_seed and the saved torch RNG state determine every mask (seeding and resume stay exact).

The words come from the fused C kernels (fused_kernels.py: Philox, computed inside the pass that uses
them, and recomputed in the backward instead of storing masks) when they build on this machine, else
from numpy's SFC64 generator (the same rule and distribution, other numbers, slower). Float32 tensors
use the kernels; other dtypes (float64 in tests) use the numpy masks. Off the CPU, `F.dropout`.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from models.reconstructions import fused_kernels


def uses_cpu_masks(x, p, training):
    """Whether dropout of `x` takes this module's CPU path: training, 0 < p < 1, `x` on the CPU.
    Elsewhere dropout is the identity (eval, p = 0) or `F.dropout` (other devices, p = 1)."""
    return training and 0.0 < p < 1.0 and x.device.type == "cpu"


def uses_kernels(p, *tensors):
    """Whether the fused kernels apply to dropout with probability p of these tensors: all float32, the
    threshold round(p * 2**32) fits 32 bits, and the library is built."""
    return (
        all(t.dtype == torch.float32 for t in tensors)
        and drop_threshold(p) < 2**32
        and fused_kernels.library() is not None
    )


def drop_threshold(p):
    """round(p * 2**32): an element is dropped when its 32-bit word is below this."""
    return round(p * 2**32)


def draw_seed():
    """One 64-bit draw from torch's global CPU generator: the seed of one mask."""
    return int(torch.empty((), dtype=torch.int64).random_(0, None))


def new_mask(p):
    """(seed, threshold, 1 / (1 - p)) of a fresh kernel mask: what a Function keeps for its backward."""
    return draw_seed(), drop_threshold(p), 1.0 / (1.0 - p)


def dropout(x, p, training):
    """Inverted dropout with keep probability 1 - p (rounded as `keep_mask`); F.dropout off the CPU."""
    if not uses_cpu_masks(x, p, training):
        return F.dropout(x, p, True) if training and p > 0.0 else x
    if uses_kernels(p, x):
        return _Dropout.apply(x.contiguous(), p)
    return x * keep_mask(x.shape, p, x.dtype).mul_(1.0 / (1.0 - p))


def dropout_add(residual, x, p, training):
    """residual + dropout(x, p, training), in one pass on CPU. `residual` may be x's shape or broadcast
    over x's leading dimensions (the decoder's query [L, E] shared by a batch [B, L, E])."""
    if not uses_cpu_masks(x, p, training):
        return residual + dropout(x, p, training)
    if uses_kernels(p, residual, x) and tiles(residual, x):
        return _DropoutAdd.apply(residual.contiguous(), x.contiguous(), p)
    return torch.addcmul(residual, x, keep_mask(x.shape, p, x.dtype), value=1.0 / (1.0 - p))


def tiles(residual, x):
    """Whether residual has the shape of x's trailing dimensions (it repeats over the leading ones)."""
    return residual.dim() <= x.dim() and residual.shape == x.shape[x.dim() - residual.dim():]


def keep_mask(shape, p, dtype=torch.bool):
    """Tensor of `shape` and `dtype`: 1 (True) with probability 1 - round(p * 2**32) / 2**32, else 0.

    With the kernels, element e (flat index) is kept as every fused kernel keeps it for the same seed.
    (Filling parts of a numpy mask in parallel threads was tried: the hand-off competes with the OpenMP
    threads that spin after each parallel region, and training got slower.)
    """
    dropped_words = drop_threshold(p)
    if dropped_words >= 2**32:  # the threshold would overflow 32 bits: nothing is kept
        return torch.zeros(shape, dtype=dtype, device="cpu")
    seed = draw_seed()
    if fused_kernels.library() is not None:
        keep = fused_kernels.keep_mask(shape, seed, dropped_words)
    else:
        numel = math.prod(shape)
        words = np.random.SFC64(seed).random_raw((numel + 1) // 2).view(np.int32)[:numel]
        # numpy's SIMD compare is ~2x faster than torch.ge here; the array is shared, not copied.
        keep = torch.from_numpy(np.greater_equal(words, dropped_words - 2**31)).view(shape).view(torch.uint8)
    # bool -> float is a scalar loop on CPU (and so is comparing straight into a float output, or
    # multiplying by a bool tensor): ~10x slower than the vectorised uint8 -> float conversion.
    return keep.view(torch.bool) if dtype == torch.bool else keep.to(dtype)


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
        if uses_kernels(p, x):
            out = fused_kernels.relu_keep(x.contiguous(), draw_seed(), drop_threshold(p))
        else:  # in place on the fresh relu output; the uint8 mask needs no float copy
            out = x.clamp_min(0).mul_(keep_mask(x.shape, p).view(torch.uint8))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0), None


class _Dropout(torch.autograd.Function):
    """x * keep / (1 - p); the backward recomputes the mask from the seed instead of storing it."""

    @staticmethod
    def forward(ctx, x, p):
        ctx.seed, ctx.threshold, ctx.scale = new_mask(p)
        return fused_kernels.dropout_scale(x, ctx.scale, ctx.seed, ctx.threshold)

    @staticmethod
    def backward(ctx, grad):
        return fused_kernels.dropout_scale(grad.contiguous(), ctx.scale, ctx.seed, ctx.threshold), None


class _DropoutAdd(torch.autograd.Function):
    """residual + x * keep / (1 - p), residual tiling x; the backward recomputes the mask from the seed."""

    @staticmethod
    def forward(ctx, residual, x, p):
        ctx.seed, ctx.threshold, ctx.scale = new_mask(p)
        ctx.residual_shape = residual.shape
        return fused_kernels.dropout_add(residual, x, ctx.scale, ctx.seed, ctx.threshold)

    @staticmethod
    def backward(ctx, grad):
        grad_residual = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_residual = grad.sum_to_size(ctx.residual_shape)
        if ctx.needs_input_grad[1]:
            grad_x = fused_kernels.dropout_scale(grad.contiguous(), ctx.scale, ctx.seed, ctx.threshold)
        return grad_residual, grad_x, None
