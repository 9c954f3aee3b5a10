"""The post-norm residual step LayerNorm(residual + dropout(x)) as one pass each way (CPU training).

Every sub-block of the (post-norm) UniAD transformer ends with `norm(residual + dropout(x))`. On CPU
with the fused kernels (float32) this is one kernel forward and one backward instead of a dropout-add
and a LayerNorm each way (each a pass over the activations, plus the dropout mask); the keep mask is
the one `dropout_add` would draw (same seed draw, same flat-index rule), and LayerNorm's statistics
are computed per row as torch does (biased variance, eps inside the square root) to float round-off.
Elsewhere it is the plain `norm(dropout_add(residual, x, p, training))`.
"""
import torch
import torch.nn as nn

from models.reconstructions import fused_kernels
from models.reconstructions.dropout import dropout_add, new_mask, tiles, uses_cpu_masks, uses_kernels


def add_dropout_norm(residual, x, p, training, norm):
    """norm(residual + dropout(x, p, training)). residual [..., E] tiling x [..., E] (e.g. the decoder's
    shared query [L, E] for a batch [B, L, E]); norm an nn.LayerNorm(E) -> like x."""
    if _fusable(residual, x, p, training, norm):
        return _AddDropoutNorm.apply(residual.contiguous(), x.contiguous(), norm.weight, norm.bias, p, norm.eps)
    return norm(dropout_add(residual, x, p, training))


def _fusable(residual, x, p, training, norm):
    return (
        uses_cpu_masks(x, p, training)
        and isinstance(norm, nn.LayerNorm)
        and norm.elementwise_affine
        and norm.bias is not None
        and tuple(norm.normalized_shape) == (x.shape[-1],)
        and tiles(residual, x)
        and uses_kernels(p, residual, x, norm.weight, norm.bias)
    )


class _AddDropoutNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, residual, x, weight, bias, p, eps):
        ctx.seed, ctx.threshold, ctx.scale = new_mask(p)
        out, xhat, rstd = fused_kernels.add_dropout_layernorm(
            residual, x, weight.contiguous(), bias.contiguous(), eps, ctx.scale, ctx.seed, ctx.threshold
        )
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.residual_shape = residual.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, weight = ctx.saved_tensors
        grad_sum, grad_x, grad_weight, grad_bias = fused_kernels.add_dropout_layernorm_backward(
            grad.contiguous(), xhat, rstd, weight.contiguous(), ctx.scale, ctx.seed, ctx.threshold
        )
        grad_residual = grad_sum.sum_to_size(ctx.residual_shape) if ctx.needs_input_grad[0] else None
        return grad_residual, grad_x, grad_weight, grad_bias, None, None
