"""Attention core with dropout on the attention weights, computed one image at a time (CPU training).

    out = (softmax(q k^T + mask) * keep / (1 - p)) v,   keep ~ Bernoulli(1 - p) per weight,

exactly what `nn.MultiheadAttention` computes in training mode (q arrives pre-scaled by 1/sqrt(d)).
Why a hand-written autograd Function: on these CPUs the element-wise passes over the [B*h, L, S]
weights (mask add, softmax, the dropout mask and its product, the same three backwards) run at memory
speed, ~5 ms each at MVTec size, and took more time than the attention matrix products. Here every
such pass works on one image's [h, L, S] block while it is in cache, heads are read straight from the
[B, L, h, d] projections (no head-split copies), and only the softmax output and the 0/1 keep mask are kept for the
backward.
"""
import torch

from models.reconstructions.dropout import keep_mask


def attention_with_dropout(q, k, v, attn_mask, p):
    """q [Bq, L, h, d] (Bq = 1: shared by the batch, or B), k/v [B, S, h, d], attn_mask [L, S]
    additive float or None, 0 < p < 1 -> [B, L, h, d]. Weights are dropped with probability p."""
    return _ChunkedAttention.apply(q, k, v, attn_mask, p)


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, attn_mask, p):
        batch, length, heads, head_dim = k.shape[0], q.shape[1], q.shape[2], q.shape[3]
        scale = 1.0 / (1.0 - p)
        out = torch.empty(batch, length, heads, head_dim, dtype=q.dtype, device=q.device)
        probs, keeps = [], []
        keep_all = keep_mask((batch, heads, length, k.shape[1]), p).view(torch.uint8)  # one draw for the batch
        for b in range(batch):
            qb, kb, vb = _heads(q, b), _heads(k, b), _heads(v, b)
            scores = torch.bmm(qb, kb.transpose(1, 2))  # [h, L, S]
            if attn_mask is not None:
                scores.add_(attn_mask)
            prob = torch.softmax(scores, dim=-1)
            # 0/1 in the weights' dtype, converted once: float * uint8 would convert on every use.
            keep = keep_all[b].to(prob.dtype)
            dropped = torch.mul(prob, keep, out=scores)
            torch.mul(torch.bmm(dropped, vb).transpose(0, 1), scale, out=out[b])
            probs.append(prob)
            keeps.append(keep)
        ctx.save_for_backward(q, k, v, *probs, *keeps)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, *saved = ctx.saved_tensors
        batch = k.shape[0]
        probs, keeps = saved[:batch], saved[batch:]
        grad_q = torch.zeros_like(q) if q.shape[0] == 1 else torch.empty_like(q)
        grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)
        for b in range(batch):
            qb, kb, vb = _heads(q, b), _heads(k, b), _heads(v, b)
            g = grad_out[b].transpose(0, 1) * ctx.scale  # [h, L, d]
            keep = keeps[b]
            dropped = probs[b] * keep
            grad_v[b].copy_(torch.bmm(dropped.transpose(1, 2), g).transpose(0, 1))
            grad_prob = torch.bmm(g, vb.transpose(1, 2)).mul_(keep)
            grad_scores = torch._softmax_backward_data(grad_prob, probs[b], -1, probs[b].dtype)
            grad_qb = torch.bmm(grad_scores, kb).transpose(0, 1)
            if q.shape[0] == 1:
                grad_q[0].add_(grad_qb)
            else:
                grad_q[b].copy_(grad_qb)
            grad_k[b].copy_(torch.bmm(grad_scores.transpose(1, 2), qb).transpose(0, 1))
        return grad_q, grad_k, grad_v, None, None


def _heads(x, b):
    """[B, L, h, d] -> image b's (or the shared image 0's) heads [h, L, d], a strided view."""
    return x[b if x.shape[0] > 1 else 0].transpose(0, 1)
