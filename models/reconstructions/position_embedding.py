"""Positional embeddings of the UniAD reconstruction: one vector per token of an H x W feature map.

Both return a [H*W, 2*num_pos_feats] tensor, tokens in row-major order (index h*W + w), and depend
only on the module (never on the batch), so callers compute them once per forward.
"""
import math

import torch
import torch.nn as nn


class PositionEmbeddingLearned(nn.Module):
    """Learned embedding: token (h, w) -> concat(col_embed[w], row_embed[h]) (column half first).

    Parameters `row_embed.weight` [H, F] and `col_embed.weight` [W, F], re-initialised U[0, 1) after
    the Embedding's own N(0, 1) draw (so the RNG is consumed exactly as in the original).
    """

    def __init__(self, feature_size, num_pos_feats=128):
        super().__init__()
        self.feature_size = tuple(feature_size)
        self.row_embed = nn.Embedding(self.feature_size[0], num_pos_feats)
        self.col_embed = nn.Embedding(self.feature_size[1], num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self):
        """Returns pos [H*W, 2F] on the parameters' device."""
        height, width = self.feature_size
        x_emb = self.col_embed.weight.unsqueeze(0).expand(height, -1, -1)  # [H, W, F]
        y_emb = self.row_embed.weight.unsqueeze(1).expand(-1, width, -1)  # [H, W, F]
        return torch.cat([x_emb, y_emb], dim=-1).flatten(0, 1)


class PositionEmbeddingSine(nn.Module):
    """DETR sine embedding: concat(pos_y, pos_x) (row half first), sin/cos interleaved per channel pair.

    Computed once at construction (float32, the original's operation order, so values are bit-equal)
    and kept as a non-persistent buffer: it moves with `.to()` and stays out of the state_dict.
    """

    def __init__(self, feature_size, num_pos_feats=128, temperature=10000, normalize=False, scale=None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: `scale` is only used with normalize=True; pass normalize=True")
        self.feature_size = tuple(feature_size)
        scale = 2 * math.pi if scale is None else scale
        pos = _sine_table(self.feature_size, num_pos_feats, temperature, scale if normalize else None)
        self.register_buffer("pos", pos, persistent=False)

    def forward(self):
        """Returns pos [H*W, 2F] (the buffer itself; callers must not modify it in place)."""
        return self.pos


def _sine_table(feature_size, num_pos_feats, temperature, scale):
    """[H*W, 2F] float32 table; `scale` None means no normalisation of the 1-based coordinates."""
    not_mask = torch.ones(feature_size)
    y_embed = not_mask.cumsum(0, dtype=torch.float32)
    x_embed = not_mask.cumsum(1, dtype=torch.float32)
    if scale is not None:
        eps = 1e-6
        y_embed = y_embed / (y_embed[-1:, :] + eps) * scale
        x_embed = x_embed / (x_embed[:, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = _interleave_sin_cos(x_embed[:, :, None] / dim_t)
    pos_y = _interleave_sin_cos(y_embed[:, :, None] / dim_t)
    return torch.cat((pos_y, pos_x), dim=2).flatten(0, 1)


def _interleave_sin_cos(angles):
    """[H, W, F] -> [H, W, F] with sin on even and cos on odd channels."""
    return torch.stack((angles[:, :, 0::2].sin(), angles[:, :, 1::2].cos()), dim=3).flatten(2)


def build_position_embedding(pos_embed_type, feature_size, hidden_dim):
    """`pos_embed_type` "learned"/"v3" or "sine"/"v2"; each half of the embedding has hidden_dim // 2 channels."""
    if pos_embed_type in ("v2", "sine"):
        return PositionEmbeddingSine(feature_size, hidden_dim // 2, normalize=True)
    if pos_embed_type in ("v3", "learned"):
        return PositionEmbeddingLearned(feature_size, hidden_dim // 2)
    raise ValueError(f"pos_embed_type {pos_embed_type!r} is not supported; use 'learned' (or 'v3') or 'sine' (or 'v2')")
