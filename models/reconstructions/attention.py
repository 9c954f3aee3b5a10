"""Fast exact multi-head attention with `nn.MultiheadAttention`'s parameters.

`FastMultiheadAttention` holds exactly the parameters of `nn.MultiheadAttention(E, h, dropout)`
(`in_proj_weight` [3E, E] packing Q, K, V rows, `in_proj_bias` [3E], `out_proj` an `nn.Linear(E, E)`),
registered and initialised in the same order, so state_dicts load both ways and a seeded
construction draws the same numbers. It works batch-first (the fused kernel's layout: no transposes)
and is specialised for the DETR pattern "positional embedding added to queries and keys only":

    Q = (q_src + pos) W_q + b_q,   K = (kv_src + pos) W_k + b_k,   V = kv_src W_v + b_v.

Work is saved where it is exact: a query source shared by the whole batch ([L, E], the decoder's
learned queries) is projected once, not per sample; self-attention projects Q and K in one GEMM;
the 1/sqrt(d) softmax scale is folded into the small W_q, b_q instead of a pass over activations.
Attention runs in `F.scaled_dot_product_attention` (fused flash kernel), except for training with
dropout on CPU, where that kernel does not apply and torch would fall back to its slower "math"
path: there `attention_core.attention_with_dropout` computes softmax(q k^T + mask) * keep / (1 - p) v,
as `nn.MultiheadAttention` does, a few images at a time while their weights are in cache.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.reconstructions.attention_core import attention_with_dropout
from models.reconstructions.dropout import uses_cpu_masks


class FastMultiheadAttention(nn.Module):
    """Batch-first multi-head attention, state_dict-compatible with `nn.MultiheadAttention`.

    forward_with_pos(q_src [B, L, E] or [L, E], kv_src [B, S, E], pos [L, E] (L == S),
    attn_mask [L, S] additive float or None) -> [B, L, E]. `forward(query, key, value, attn_mask)`
    is the plain (no positional embedding) batch-first form.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        # Same registration (and so state_dict) order and same RNG draws as nn.MultiheadAttention:
        # out_proj's own Linear init, then xavier_uniform_ on the packed in-projection.
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query, key, value, attn_mask=None):
        """nn.MultiheadAttention(batch_first=True)(query, key, value, attn_mask)[0], query may be [L, E]."""
        (w_q, w_k, w_v), (b_q, b_k, b_v) = self._scaled_in_proj()
        return self._attend(F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v), attn_mask)

    def forward_with_pos(self, q_src, kv_src, pos, attn_mask=None):
        """Attention with Q = (q_src + pos) W_q, K = (kv_src + pos) W_k, V = kv_src W_v (plus biases)."""
        q, k, v = self._project_with_pos(q_src, kv_src, pos)
        return self._attend(q, k, v, attn_mask)

    def _scaled_in_proj(self):
        """((W_q / sqrt(d), W_k, W_v), (b_q / sqrt(d), b_k, b_v)): the softmax scale is folded into the
        (small) query weights instead of a pass over the activations."""
        scale = 1.0 / math.sqrt(self.head_dim)
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        return (w_q * scale, w_k, w_v), (b_q * scale, b_k, b_v)

    def _project_with_pos(self, q_src, kv_src, pos):
        # chunk rather than slicing: its backward concatenates gradients instead of zero-filling.
        (w_q, w_k, w_v), (b_q, b_k, b_v) = self._scaled_in_proj()
        if q_src is kv_src:  # self-attention: Q and K from the same input, one GEMM
            q, k = F.linear(kv_src + pos, torch.cat([w_q, w_k]), torch.cat([b_q, b_k])).chunk(2, dim=-1)
            return q, k, F.linear(kv_src, w_v, b_v)
        # A query source shared by the batch ([L, E]) is projected once here.
        return F.linear(q_src + pos, w_q, b_q), F.linear(kv_src + pos, w_k, b_k), F.linear(kv_src, w_v, b_v)

    def _attend(self, q, k, v, attn_mask):
        """q (pre-scaled by 1/sqrt(d)) [B, L, E] or [L, E], k/v [B, S, E]
        -> out_proj(softmax(q k^T + mask) v) [B, L, E]."""
        batch, length = k.shape[0], q.shape[-2]
        p = self.dropout if self.training else 0.0
        if uses_cpu_masks(q, p, self.training):
            # [B, L, h, d] views of the projections: the core reads heads in place (no transposes).
            heads = (self.num_heads, self.head_dim)
            q4 = q.unflatten(-1, heads) if q.dim() == 3 else q.unflatten(-1, heads).unsqueeze(0)
            out = attention_with_dropout(q4, k.unflatten(-1, heads), v.unflatten(-1, heads), attn_mask, p)
            return self.out_proj(out.flatten(2))
        q = self._split_heads(q).expand(batch, -1, -1, -1)
        k, v = self._split_heads(k), self._split_heads(v)
        if attn_mask is not None and attn_mask.dtype not in (torch.bool, q.dtype):
            attn_mask = attn_mask.to(q.dtype)  # e.g. under autocast; SDPA wants the query's dtype
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, scale=1.0)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))

    def _split_heads(self, x):
        """[..., N, E] -> [..., h, N, d] (a view)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)
