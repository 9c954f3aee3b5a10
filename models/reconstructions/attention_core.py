"""Attention core with dropout on the attention weights, computed a few images at a time (CPU training).

    out = (softmax(q k^T + mask) * keep / (1 - p)) v,   keep ~ Bernoulli(1 - p) per weight,

exactly what `nn.MultiheadAttention` computes in training mode (q arrives pre-scaled by 1/sqrt(d)).
Why a hand-written autograd Function: on these CPUs the element-wise passes over the [B*h, L, S]
weights (mask add, softmax, the dropout mask and its product, the same three backwards) run at memory
speed, ~5 ms each at MVTec size, and took more time than the attention matrix products. Here every
such pass works on a block of a few images' weights (CHUNK_BYTES) while it is in cache, only the
softmax output P and the dropped weights D are kept for the backward, and the backward needs three
passes over a block (`_softmax_dropout_backward`) instead of five. With the fused kernels (float32,
fused_kernels.py) the forward's mask add, softmax, keep mask and product are one pass, and so is the
backward's; without them (or for float64) torch ops and a numpy mask do the same.
"""
import torch

from models.reconstructions import fused_kernels
from models.reconstructions.dropout import draw_seed, drop_threshold, keep_mask, uses_kernels

CHUNK_BYTES = 4 << 20  # attention weights per block: fits the last-level cache, few enough Python steps


def attention_with_dropout(q, k, v, attn_mask, p):
    """q [Bq, L, h, d] (Bq = 1: shared by the batch, or B), k/v [B, S, h, d], attn_mask [L, S]
    additive float or None, 0 < p < 1 -> [B, L, h, d]. Weights are dropped with probability p."""
    return _ChunkedAttention.apply(q, k, v, attn_mask, p)


def _chunks(batch, heads, length, keys, itemsize):
    """[(b0, b1)] image ranges whose weights take at most CHUNK_BYTES (at least one image each)."""
    per_image = max(1, CHUNK_BYTES // (heads * length * keys * itemsize))
    return [(b, min(b + per_image, batch)) for b in range(0, batch, per_image)]


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, attn_mask, p):
        batch, length, heads, head_dim = k.shape[0], q.shape[1], q.shape[2], q.shape[3]
        scale = 1.0 / (1.0 - p)
        out = torch.empty(batch, length, heads, head_dim, dtype=q.dtype, device=q.device)
        chunks = _chunks(batch, heads, length, k.shape[1], q.element_size())
        source = _keep_source(q, k, v, attn_mask, p)
        probs, droppeds = [], []
        for b0, b1 in chunks:
            qc, kc, vc = _heads(q, b0, b1), _heads(k, b0, b1), _heads(v, b0, b1)
            prob, dropped = _softmax_and_drop(torch.bmm(qc, kc.transpose(1, 2)), b0, heads, attn_mask, source)
            _put(out, b0, b1, torch.bmm(dropped, vc), scale)
            probs.append(prob)
            droppeds.append(dropped)
        ctx.save_for_backward(q, k, v, *probs, *droppeds)
        ctx.chunks, ctx.scale, ctx.fused = chunks, scale, not torch.is_tensor(source)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, *saved = ctx.saved_tensors
        count = len(ctx.chunks)
        probs, droppeds = saved[:count], saved[count:]
        grad_q = torch.zeros_like(q) if q.shape[0] == 1 else torch.empty_like(q)
        grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)
        for (b0, b1), prob, dropped in zip(ctx.chunks, probs, droppeds):
            qc, kc, vc = _heads(q, b0, b1), _heads(k, b0, b1), _heads(v, b0, b1)
            g = _heads(grad_out, b0, b1)  # [n*h, L, d]
            _put(grad_v, b0, b1, torch.bmm(dropped.transpose(1, 2), g), ctx.scale)
            grad_scores = _softmax_dropout_backward(torch.bmm(g, vc.transpose(1, 2)), prob, dropped, ctx.fused)
            grad_qc = torch.bmm(grad_scores, kc)
            if q.shape[0] == 1:  # shared query: sum the images' gradients
                grad_q[0].add_(grad_qc.unflatten(0, (b1 - b0, -1)).sum(0).transpose(0, 1), alpha=ctx.scale)
            else:
                _put(grad_q, b0, b1, grad_qc, ctx.scale)
            _put(grad_k, b0, b1, torch.bmm(grad_scores.transpose(1, 2), qc), ctx.scale)
        return grad_q, grad_k, grad_v, None, None


def _keep_source(q, k, v, attn_mask, p):
    """Where the forward's keep decisions come from, drawn once for all blocks: (seed, threshold) for the
    fused kernels (float32), else a uint8 keep mask [B*h, L, S] (numpy words). Element e of the [B*h, L, S]
    weights is kept exactly when `keep_mask`'s element e would be, with the same draw."""
    batch, length, heads = k.shape[0], q.shape[1], q.shape[2]
    additive = attn_mask is None or attn_mask.dtype == torch.float32
    if additive and uses_kernels(p, q, k, v):
        return draw_seed(), drop_threshold(p)
    return keep_mask((batch * heads, length, k.shape[1]), p).view(torch.uint8)


def _softmax_and_drop(scores, b0, heads, attn_mask, source):
    """scores [n*h, L, S] of images b0 .. b0+n-1 -> (P = softmax(scores + mask), D = P * keep), both
    [n*h, L, S]; one of them reuses the scores' memory."""
    if torch.is_tensor(source):
        if attn_mask is not None:
            scores.add_(attn_mask)
        prob = torch.softmax(scores, dim=-1)
        return prob, torch.mul(prob, source[b0 * heads:b0 * heads + scores.shape[0]], out=scores)
    seed, threshold = source
    rows = scores.view(-1, scores.shape[-1])
    mask = None if attn_mask is None else attn_mask.contiguous()
    dropped = fused_kernels.softmax_dropout_(rows, mask, b0 * heads * scores[0].numel(), seed, threshold)
    return scores, dropped.view(scores.shape)


def _softmax_dropout_backward(grad_dropped, prob, dropped, fused=False):
    """Gradient wrt the scores S of D = softmax(S) * keep, from dL/dD, P = softmax(S) and D (in place
    on grad_dropped). With dP = dD * keep, softmax's backward P * (dP - sum(dP * P)) equals
    D * dD - P * sum(D * dD), since P * keep = D and keep is 0/1: the mask itself is not needed."""
    if fused:
        cols = grad_dropped.shape[-1]
        rows = (t.view(-1, cols) for t in (grad_dropped, prob, dropped))
        fused_kernels.softmax_dropout_backward_(*rows)
        return grad_dropped
    grad_dropped.mul_(dropped)  # D * dD
    row_sums = grad_dropped.sum(dim=-1, keepdim=True)
    return grad_dropped.addcmul_(prob, row_sums, value=-1.0)


def _heads(x, b0, b1):
    """[B, L, h, d] -> images b0..b1-1 as [n*h, L, d] (a view for one image, else a small copy);
    a shared query (B = 1) is expanded to the n images."""
    block = x[b0:b1] if x.shape[0] > 1 else x.expand(b1 - b0, -1, -1, -1)
    if b1 - b0 == 1:
        return block[0].transpose(0, 1)
    return block.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])


def _put(dest, b0, b1, value, scale=None):
    """dest[b0:b1] ([n, L, h, d]) = value ([n*h, L, d]) (* scale)."""
    value = value.unflatten(0, (b1 - b0, dest.shape[2])).transpose(1, 2)
    if scale is None:
        dest[b0:b1].copy_(value)
    else:
        torch.mul(value, scale, out=dest[b0:b1])
