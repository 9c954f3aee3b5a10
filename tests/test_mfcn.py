"""MFCN neck: per-level align-corners bilinear resize to the output stride, channel concat in level order."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.necks import MFCN

INPLANES, INSTRIDES = [3, 4, 5, 6], [2, 4, 8, 16]


def _features(batch=2, size=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, size // s, size // s, generator=gen) for c, s in zip(INPLANES, INSTRIDES)]


def _neck():
    return MFCN(inplanes=INPLANES, outplanes=[sum(INPLANES)], instrides=INSTRIDES, outstrides=[16])


def test_equals_per_level_interpolate_with_align_corners():
    features = _features()
    out = _neck()({"features": features})
    expected = torch.cat([F.interpolate(f, size=(4, 4), mode="bilinear", align_corners=True) for f in features], 1)
    assert out["feature_align"].shape == (2, 18, 4, 4)
    assert torch.equal(out["feature_align"], expected)
    assert out["outplane"] == [18]


def test_equals_the_original_upsampling_module_and_not_align_corners_false():
    features = _features(seed=1)
    out = _neck()({"features": features})["feature_align"]
    modules = [nn.UpsamplingBilinear2d(scale_factor=s / 16) for s in INSTRIDES]
    assert torch.equal(out, torch.cat([m(f) for m, f in zip(modules, features)], 1))
    wrong = torch.cat([F.interpolate(f, size=(4, 4), mode="bilinear", align_corners=False) for f in features], 1)
    assert (out - wrong).abs().max() > 1e-2


def test_level_order_and_identity_level():
    features = _features(seed=2)
    out = _neck()({"features": features})["feature_align"]
    assert torch.equal(out[:, -6:], features[-1])  # stride 16 -> scale 1: copied unchanged, last in order


def test_getters_and_no_parameters():
    neck = _neck()
    assert neck.get_outplanes() == [18] and neck.get_outstrides() == [16]
    assert len(list(neck.parameters())) == 0 and len(neck.state_dict()) == 0


def test_outplanes_must_be_sum_of_inplanes():
    with pytest.raises(ValueError, match=r"outplanes \[17\] must be \[sum\(inplanes\)\] = \[18\]"):
        MFCN(inplanes=INPLANES, outplanes=[17], instrides=INSTRIDES, outstrides=[16])


def test_bad_lengths_are_errors():
    with pytest.raises(ValueError, match="equal length"):
        MFCN(inplanes=[3, 4], outplanes=[7], instrides=[2], outstrides=[16])
    with pytest.raises(ValueError, match="outstrides must have one entry"):
        MFCN(inplanes=[3], outplanes=[3], instrides=[2], outstrides=[8, 16])
    with pytest.raises(ValueError, match="expects 4 feature levels, got 3"):
        _neck()({"features": _features()[:3]})
