"""MFCN neck: resize every backbone level to the output stride and concatenate channels (4.3)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class MFCN(nn.Module):
    """Multi-scale feature concatenation; no parameters.

    Level i is resized by the factor instrides[i] / outstrides[0] with bilinear interpolation,
    align_corners=True (what the original's nn.UpsamplingBilinear2d does, also when shrinking: no
    anti-aliasing), then levels are concatenated along channels in order.
    """

    def __init__(self, inplanes, outplanes, instrides, outstrides):
        super().__init__()
        if len(inplanes) != len(instrides) or not inplanes:
            raise ValueError(f"MFCN: inplanes {inplanes!r} and instrides {instrides!r} must be non-empty and of equal length")
        if len(outstrides) != 1:
            raise ValueError(f"MFCN: outstrides must have one entry, got {outstrides!r}")
        if list(outplanes) != [sum(inplanes)]:
            raise ValueError(
                f"MFCN: outplanes {outplanes!r} must be [sum(inplanes)] = [{sum(inplanes)}] for inplanes {inplanes!r}; "
                "it is derived from the backbone's channels by the config loader"
            )
        self.inplanes, self.outplanes = list(inplanes), list(outplanes)
        self.instrides, self.outstrides = list(instrides), list(outstrides)
        self.scale_factors = [stride / self.outstrides[0] for stride in self.instrides]

    def get_outplanes(self):
        return self.outplanes

    def get_outstrides(self):
        return self.outstrides

    def forward(self, input):
        """Reads `features` (list of [B, C_i, H_i, W_i]); returns {"feature_align": [B, sum C_i, h, w], "outplane"}."""
        features = input["features"]
        if len(features) != len(self.inplanes):
            raise ValueError(f"MFCN expects {len(self.inplanes)} feature levels, got {len(features)}")
        resized = [
            F.interpolate(feature, scale_factor=scale, mode="bilinear", align_corners=True)
            for feature, scale in zip(features, self.scale_factors)
        ]
        return {"feature_align": torch.cat(resized, dim=1), "outplane": self.outplanes}
