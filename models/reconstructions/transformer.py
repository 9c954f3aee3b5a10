"""The UniAD transformer: DETR-style encoder and the "layer-wise query" decoder, plus the neighbour mask.

Module names, registration order and RNG draws follow the original (see uniad_official.md 4.7-4.10),
so state_dicts are interchangeable and a seeded construction gives the same weights.

Two execution paths share the modules (`attn_impl`):
* "torch": the original computation, sequence-first [L, B, E], `nn.MultiheadAttention`, `F.dropout`;
* "fast": batch-first [B, L, E], `FastMultiheadAttention` (same parameters), batch-independent work
  (the decoder's learned queries and their projections, pos projections) done once per forward, and
  the fast CPU dropout. Outputs agree with "torch" to float round-off.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.reconstructions.add_norm import add_dropout_norm
from models.reconstructions.attention import FastMultiheadAttention
from models.reconstructions.dropout import dropout as fast_dropout, dropout_add, relu_keep, uses_cpu_masks

ATTN_IMPLS = ("fast", "torch")
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def build_neighbor_mask(feature_size, neighbor_size):
    """Additive float mask [H*W, H*W]: -inf where key (h2, w2) lies in the query's neighbourhood
    |h2 - h1| <= nh // 2 and |w2 - w1| <= nw // 2 (itself included, clipped at the borders), else 0.

    Tokens are row-major (index h*W + w) for queries and keys. Raises ValueError when some query
    would see no key at all (softmax over nothing gives NaN).
    """
    height, width = feature_size
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    near = ((rows[:, None] - rows[None, :]).abs() <= neighbor_size[0] // 2) & (
        (cols[:, None] - cols[None, :]).abs() <= neighbor_size[1] // 2
    )
    if near.all(dim=1).any():
        raise ValueError(
            f"neighbor_mask.neighbor_size {list(neighbor_size)} hides every key from some query of the "
            f"{height}x{width} feature map; use a neighbourhood smaller than the map"
        )
    return torch.zeros(near.shape).masked_fill(near, float("-inf"))


def _make_attention(attn_impl, hidden_dim, nhead, dropout):
    if attn_impl == "torch":
        return nn.MultiheadAttention(hidden_dim, nhead, dropout=dropout)
    return FastMultiheadAttention(hidden_dim, nhead, dropout=dropout)


def _attention(attn, q_src, kv_src, pos, mask):
    """attn(Q = q_src + pos, K = kv_src + pos, V = kv_src) in the layout of the module's path.

    fast: q_src [B, L, E] or [L, E] (shared by the batch), kv_src [B, S, E], pos [L, E].
    torch: q_src / kv_src [L, B, E], pos [L, 1, E] (the original call, including q is k for self-attention).
    """
    if isinstance(attn, FastMultiheadAttention):
        return attn.forward_with_pos(q_src, kv_src, pos, mask)
    key = kv_src + pos
    query = key if q_src is kv_src else q_src + pos
    return attn(query, key, value=kv_src, attn_mask=mask)[0]


class _FeedForwardMixin:
    """linear1 -> activation -> dropout -> linear2, and the path's dropout function."""

    def _init_ffn(self, hidden_dim, dim_feedforward, dropout, activation, attn_impl):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not supported; use one of {list(ACTIVATIONS)}")
        if activation == "glu" and dim_feedforward % 2:
            raise ValueError(f"activation 'glu' halves the width: dim_feedforward {dim_feedforward} must be even")
        self.linear1 = nn.Linear(hidden_dim, dim_feedforward)
        # glu halves linear1's output; the original kept linear2's input at dim_feedforward and so
        # could not run glu at all. Sizing linear2 to the halved width makes glu usable.
        self.linear2 = nn.Linear(dim_feedforward // 2 if activation == "glu" else dim_feedforward, hidden_dim)
        self.activation = ACTIVATIONS[activation]
        self.dropout_p = dropout
        self._fast = attn_impl != "torch"

    def _drop(self, x):
        if self._fast:
            return fast_dropout(x, self.dropout_p, self.training)
        return F.dropout(x, self.dropout_p, self.training)

    def _add(self, residual, x):
        """residual + dropout(x): the residual branch of every sub-block."""
        if self._fast:
            return dropout_add(residual, x, self.dropout_p, self.training)
        return residual + F.dropout(x, self.dropout_p, self.training)

    def _add_norm(self, residual, x, norm):
        """norm(residual + dropout(x)): the end of every post-norm sub-block (one fused pass on CPU)."""
        if self._fast:
            return add_dropout_norm(residual, x, self.dropout_p, self.training, norm)
        return norm(self._add(residual, x))

    def _ffn(self, x):
        p = self.dropout_p
        if self._fast and self.activation is F.relu and uses_cpu_masks(x, p, self.training):
            # relu + dropout in one pass; dropout's 1 / (1 - p) goes on linear2's weight instead.
            weight = self.linear2.weight * (1.0 / (1.0 - p))
            return F.linear(relu_keep(self.linear1(x), p), weight, self.linear2.bias)
        return self.linear2(self._drop(self.activation(self.linear1(x))))


class TransformerEncoderLayer(_FeedForwardMixin, nn.Module):
    """Self-attention + FFN; post-norm unless normalize_before. Keys: self_attn, linear1, linear2, norm1, norm2."""

    def __init__(self, hidden_dim, nhead, dim_feedforward, dropout, activation, normalize_before, attn_impl):
        super().__init__()
        self.self_attn = _make_attention(attn_impl, hidden_dim, nhead, dropout)
        self._init_ffn(hidden_dim, dim_feedforward, dropout, activation, attn_impl)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.normalize_before = normalize_before

    def forward(self, src, pos, mask):
        """src [B, L, E] (fast) or [L, B, E] (torch) -> same shape."""
        if self.normalize_before:
            normed = self.norm1(src)
            src = self._add(src, _attention(self.self_attn, normed, normed, pos, mask))
            return self._add(src, self._ffn(self.norm2(src)))
        src = self._add_norm(src, _attention(self.self_attn, src, src, pos, mask), self.norm1)
        return self._add_norm(src, self._ffn(src), self.norm2)


class TransformerDecoderLayer(_FeedForwardMixin, nn.Module):
    """Layer-wise query decoder layer. Keys: learned_embed, self_attn, multihead_attn, linear1, linear2, norm1-3.

    The query is this layer's own `learned_embed` [H*W, E]; `self_attn` attends from it to the
    encoder memory, `multihead_attn` from its result to `out` (previous layer output).
    """

    def __init__(self, hidden_dim, feature_size, nhead, dim_feedforward, dropout, activation, normalize_before, attn_impl):
        super().__init__()
        self.learned_embed = nn.Embedding(feature_size[0] * feature_size[1], hidden_dim)
        self.self_attn = _make_attention(attn_impl, hidden_dim, nhead, dropout)
        self.multihead_attn = _make_attention(attn_impl, hidden_dim, nhead, dropout)
        self._init_ffn(hidden_dim, dim_feedforward, dropout, activation, attn_impl)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)
        self.normalize_before = normalize_before

    def _query(self, memory):
        """fast: [L, E], shared by the batch (broadcast). torch: repeated to [L, B, E] as the original."""
        if self._fast:
            return self.learned_embed.weight
        return self.learned_embed.weight.unsqueeze(1).repeat(1, memory.shape[1], 1)

    def forward(self, out, memory, pos, mask1, mask2):
        """out, memory [B, L, E] (fast) or [L, B, E] (torch) -> same shape."""
        query = self._query(memory)
        if self.normalize_before:
            tgt = self._add(query, _attention(self.self_attn, self.norm1(query), memory, pos, mask1))
            tgt = self._add(tgt, _attention(self.multihead_attn, self.norm2(tgt), out, pos, mask2))
            return self._add(tgt, self._ffn(self.norm3(tgt)))
        tgt = self._add_norm(query, _attention(self.self_attn, query, memory, pos, mask1), self.norm1)
        tgt = self._add_norm(tgt, _attention(self.multihead_attn, tgt, out, pos, mask2), self.norm2)
        return self._add_norm(tgt, self._ffn(tgt), self.norm3)


def _clones(module, count):
    """`count` deep copies (so all copies start from the prototype's identical weights, as the original)."""
    return nn.ModuleList([copy.deepcopy(module) for _ in range(count)])


class TransformerEncoder(nn.Module):
    def __init__(self, encoder_layer, num_layers, norm=None):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src, pos, mask):
        for layer in self.layers:
            src = layer(src, pos, mask)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    def __init__(self, decoder_layer, num_layers, norm):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, memory, pos, mask1, mask2):
        """Layer 0 gets `memory` as its previous output; the final LayerNorm is always applied."""
        out = memory
        for layer in self.layers:
            out = layer(out, memory, pos, mask1, mask2)
        return self.norm(out)


class Transformer(nn.Module):
    """Encoder (+ final norm only when pre-norm) then decoder (+ final norm); neighbour mask as a buffer.

    neighbor_mask: None, or a mapping with `neighbor_size` [nh, nw] and `mask` [enc, dec1, dec2] bools
    saying which attentions use it. The mask is a non-persistent buffer (moves with `.to()`, not in
    the state_dict).
    """

    def __init__(self, hidden_dim, feature_size, neighbor_mask, nhead, num_encoder_layers, num_decoder_layers,
                 dim_feedforward, dropout=0.1, activation="relu", normalize_before=False, attn_impl="fast"):
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl {attn_impl!r} is not supported; use one of {list(ATTN_IMPLS)}")
        self.feature_size = tuple(feature_size)
        self.attn_impl = attn_impl
        layer_args = (nhead, dim_feedforward, dropout, activation, normalize_before, attn_impl)
        encoder_layer = TransformerEncoderLayer(hidden_dim, *layer_args)
        encoder_norm = nn.LayerNorm(hidden_dim) if normalize_before else None
        self.encoder = TransformerEncoder(encoder_layer, num_encoder_layers, encoder_norm)
        decoder_layer = TransformerDecoderLayer(hidden_dim, self.feature_size, *layer_args)
        self.decoder = TransformerDecoder(decoder_layer, num_decoder_layers, nn.LayerNorm(hidden_dim))
        self.hidden_dim = hidden_dim
        self.nhead = nhead
        self.mask_use = tuple(neighbor_mask["mask"]) if neighbor_mask else (False, False, False)
        mask = build_neighbor_mask(self.feature_size, neighbor_mask["neighbor_size"]) if neighbor_mask else None
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, src, pos):
        """src [B, H*W, E] (fast) or [H*W, B, E] (torch); pos [H*W, E] -> (decoder_out, encoder_out), src's layout."""
        if self.attn_impl == "torch":
            pos = pos.unsqueeze(1)
        mask_enc, mask_dec1, mask_dec2 = (self.mask if use else None for use in self.mask_use)
        memory = self.encoder(src, pos, mask_enc)
        return self.decoder(memory, pos, mask_dec1, mask_dec2), memory
