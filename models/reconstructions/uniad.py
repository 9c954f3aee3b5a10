"""UniAD reconstruction: transformer feature reconstruction and the anomaly map (uniad_official.md 4.4-4.10)."""
import os
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.initializer import initialize_from_cfg
from models.reconstructions.position_embedding import build_position_embedding
from models.reconstructions.transformer import Transformer


class UniAD(nn.Module):
    """Reconstructs the neck features with a neighbour-masked transformer and scores the residual.

    Nested options may be EasyDicts, dicts, or None/False (off): feature_jitter {scale, prob},
    neighbor_mask {neighbor_size [nh, nw], mask [enc, dec1, dec2]}, save_recon {save_dir},
    initializer {method, ...} (None: normal std 0.01). attn_impl "fast" (default) or "torch" (the
    original sequence-first nn.MultiheadAttention path); both share one state_dict.
    State_dict: pos_embed.*, transformer.encoder.layers.*, transformer.decoder.layers.*,
    transformer.decoder.norm.*, input_proj.*, output_proj.* (the original's names and order).
    """

    def __init__(self, inplanes, instrides, feature_size, feature_jitter, neighbor_mask, hidden_dim,
                 pos_embed_type, save_recon, initializer, nhead, num_encoder_layers, num_decoder_layers,
                 dim_feedforward, dropout=0.1, activation="relu", normalize_before=False, attn_impl="fast"):
        super().__init__()
        _check_args(inplanes, instrides, feature_size, hidden_dim, nhead, dropout)
        self.inplanes, self.instrides = list(inplanes), list(instrides)
        self.feature_size = tuple(feature_size)
        self.feature_jitter = _options("feature_jitter", feature_jitter, ("scale", "prob"))
        neighbor_mask = _options("neighbor_mask", neighbor_mask, ("neighbor_size", "mask"))
        _check_neighbor_mask(neighbor_mask)
        self.save_recon = _options("save_recon", save_recon, ("save_dir",))
        # Construction order = the original's RNG draw order: pos_embed, transformer, input/output proj, init walk.
        self.pos_embed = build_position_embedding(pos_embed_type, self.feature_size, hidden_dim)
        self.transformer = Transformer(
            hidden_dim, self.feature_size, neighbor_mask, nhead, num_encoder_layers, num_decoder_layers,
            dim_feedforward, dropout, activation, normalize_before, attn_impl,
        )
        self.input_proj = nn.Linear(inplanes[0], hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, inplanes[0])
        initialize_from_cfg(self, initializer)

    def get_outplanes(self):
        return self.inplanes

    def get_outstrides(self):
        return self.instrides

    def forward(self, input):
        """Reads `feature_align` [B, C, H, W] (+ `clsname`, `filename` lists when eval with save_recon).

        Returns {"feature_rec": [B, C, H, W], "feature_align": the input tensor,
        "pred": [B, 1, H*s, W*s]} with s = instrides[0]; pred is the per-position L2 norm of
        feature_rec - feature_align, upsampled bilinearly with align_corners=True.
        """
        feature_align = input["feature_align"]
        self._check_features(feature_align)
        tokens = self._to_tokens(feature_align)
        if self.training and self.feature_jitter:
            tokens = self._add_jitter(tokens)
        decoded, _ = self.transformer(self.input_proj(tokens), self.pos_embed())
        feature_rec = self._from_tokens(self.output_proj(decoded))
        if not self.training and self.save_recon:
            self._save_recon(input, feature_rec)
        pred = torch.sqrt(torch.sum((feature_rec - feature_align) ** 2, dim=1, keepdim=True))
        pred = F.interpolate(pred, scale_factor=self.instrides[0], mode="bilinear", align_corners=True)
        return {"feature_rec": feature_rec, "feature_align": feature_align, "pred": pred}

    @property
    def _batch_first(self):
        return self.transformer.attn_impl != "torch"

    def _check_features(self, feature_align):
        expected = (self.inplanes[0], *self.feature_size)
        if feature_align.dim() != 4 or tuple(feature_align.shape[1:]) != expected:
            raise ValueError(
                f"UniAD got feature_align of shape {list(feature_align.shape)}, expected [B, {expected[0]}, "
                f"{expected[1]}, {expected[2]}]: feature_size must be input_size // neck outstride and "
                "inplanes the neck's outplanes"
            )

    def _to_tokens(self, features):
        """[B, C, H, W] -> [B, H*W, C] (fast) or [H*W, B, C] (torch); token index h*W + w (views)."""
        tokens = features.flatten(2)
        return tokens.transpose(1, 2) if self._batch_first else tokens.permute(2, 0, 1)

    def _from_tokens(self, tokens):
        """Inverse of _to_tokens."""
        tokens = tokens.transpose(1, 2) if self._batch_first else tokens.permute(1, 2, 0)
        return tokens.unflatten(2, self.feature_size)

    def _add_jitter(self, tokens):
        """With probability prob (Python `random`): tokens + N(0, 1) * (||token||_2 / C) * scale.

        The noise is drawn as the original does, `torch.randn(H*W, B, C)` from the global CPU
        generator, so a given torch seed gives the original's noise on any device.
        """
        if random.uniform(0, 1) > self.feature_jitter["prob"]:
            return tokens
        channels = tokens.shape[-1]
        batch, num_tokens = (tokens.shape[0], tokens.shape[1]) if self._batch_first else tokens.shape[1::-1]
        noise = torch.randn((num_tokens, batch, channels), device="cpu").to(device=tokens.device, dtype=tokens.dtype)
        if self._batch_first:
            noise = noise.transpose(0, 1)
        norms = tokens.norm(dim=-1, keepdim=True) / channels
        return tokens + noise * norms * self.feature_jitter["scale"]

    def _save_recon(self, input, feature_rec):
        """Writes feature_rec[i] as float32 .npy to <save_dir>/<clsname>/<defect dir>/<file stem>.npy."""
        for key in ("clsname", "filename"):
            if key not in input:
                raise KeyError(f"UniAD with save_recon needs batch key {key!r} in eval mode; set save_recon: False to skip saving")
        for clsname, filename, rec in zip(input["clsname"], input["filename"], feature_rec):
            defect = os.path.basename(os.path.dirname(filename))
            stem = os.path.splitext(os.path.basename(filename))[0]
            out_dir = os.path.join(self.save_recon["save_dir"], clsname, defect)
            os.makedirs(out_dir, exist_ok=True)
            np.save(os.path.join(out_dir, stem + ".npy"), rec.detach().cpu().float().numpy())


def _options(name, cfg, keys):
    """None for a falsy option, else a plain dict with exactly `keys` (typos and omissions are errors)."""
    if not cfg:
        return None
    if not hasattr(cfg, "keys") or set(cfg.keys()) != set(keys):
        raise ValueError(f"UniAD option {name} must be False/None or a mapping with keys {list(keys)}, got {cfg!r}")
    return {key: cfg[key] for key in keys}


def _check_neighbor_mask(neighbor_mask):
    if neighbor_mask is None:
        return
    size, use = neighbor_mask["neighbor_size"], neighbor_mask["mask"]
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"neighbor_mask.neighbor_size must be two positive ints [nh, nw], got {size!r}")
    if len(use) != 3 or any(not isinstance(u, bool) for u in use):
        raise ValueError(f"neighbor_mask.mask must be three bools [encoder, decoder 1st, decoder 2nd], got {use!r}")


def _check_args(inplanes, instrides, feature_size, hidden_dim, nhead, dropout):
    if len(inplanes) != 1 or len(instrides) != 1:
        raise ValueError(
            f"UniAD takes one feature level: inplanes {inplanes!r} and instrides {instrides!r} must have one entry "
            "(the neck's concatenated output)"
        )
    if len(feature_size) != 2:
        raise ValueError(f"UniAD feature_size must be [H, W], got {feature_size!r}")
    if hidden_dim % 2 or hidden_dim % nhead:
        raise ValueError(f"UniAD hidden_dim {hidden_dim} must be even and divisible by nhead {nhead}")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"UniAD dropout must be in [0, 1], got {dropout}")
