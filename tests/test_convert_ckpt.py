"""Original-checkpoint converter: layout, key mapping, numpy/EasyDict loading, refusal of unsafe pickles."""
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

from models.backbones import efficientnet_b4
from models.backbones.efficientnet_keymap import timm_to_lukemelas
from models.ckpt_convert import convert_file, convert_state_dict, load_original
from models.model_helper import ModelHelper
from tools.convert_official_ckpt import main as convert_main
from utils.config_helper import load_config

ROOT = Path(__file__).resolve().parents[1]

LUKE_HEAD = ["_conv_head.weight", "_bn1.weight", "_bn1.bias", "_bn1.running_mean", "_bn1.running_var",
             "_bn1.num_batches_tracked", "_fc.weight", "_fc.bias"]
RECON = {"reconstruction.pos_embed.row_embed.weight": (14, 128),
         "reconstruction.transformer.encoder.layers.0.self_attn.in_proj_weight": (768, 256),
         "reconstruction.input_proj.weight": (256, 272), "reconstruction.output_proj.bias": (272,)}


@pytest.fixture(scope="module")
def backbone_sd():
    torch.manual_seed(0)
    return efficientnet_b4(pretrained=False).state_dict()


def original_checkpoint(backbone_sd, best_metric) -> dict:
    """An original-layout checkpoint: DDP prefix, lukemelas backbone with head, EasyDict arch."""
    luke = timm_to_lukemelas(backbone_sd)
    luke.update({k: torch.randn(3) for k in LUKE_HEAD})
    sd = {f"module.backbone.{k}": v for k, v in luke.items()}
    sd.update({f"module.{k}": torch.randn(shape) for k, shape in RECON.items()})
    arch = EasyDict({"net": [{"name": "backbone", "type": "models.backbones.efficientnet_b4", "frozen": True,
                              "kwargs": {"pretrained": True, "outblocks": [1, 5, 9, 21], "outstrides": [2, 4, 8, 16]}},
                             {"name": "neck", "prev": "backbone", "type": "models.necks.MFCN",
                              "kwargs": {"outstrides": [16]}}]}).net
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}
    return {"epoch": 777, "arch": arch, "state_dict": sd, "best_metric": best_metric, "optimizer": optimizer}


class _Numpy1Float:
    """Pickles like a float64 scalar written under numpy 1.x (``numpy.core.multiarray.scalar``)."""

    def __init__(self, value: float):
        self.value = value

    def __reduce__(self):
        return _old_scalar, (np.dtype(np.float64), np.float64(self.value).tobytes())


def _old_scalar(dtype, data):  # stands in for numpy 1.x's function while pickling
    raise AssertionError("never called")


_old_scalar.__module__, _old_scalar.__qualname__ = "numpy.core.multiarray", "scalar"


def save_like_numpy1(obj, path, monkeypatch):
    fake = types.ModuleType("numpy.core.multiarray")
    fake.scalar = _old_scalar
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "numpy.core.multiarray", fake)
        torch.save(obj, path, _use_new_zipfile_serialization=False)  # torch 1.5's legacy format


@pytest.mark.parametrize("numpy1_legacy", [False, True])
def test_converts_original_layout_to_our_format(backbone_sd, tmp_path, monkeypatch, numpy1_legacy):
    src, dst = tmp_path / "ckpt.pth.tar", tmp_path / "out" / "converted.pth.tar"
    if numpy1_legacy:
        save_like_numpy1(original_checkpoint(backbone_sd, _Numpy1Float(0.9712)), src, monkeypatch)
    else:
        torch.save(original_checkpoint(backbone_sd, np.float64(0.9712)), src)
    original = load_original(str(src))
    assert original["arch"][0]["kwargs"]["outblocks"] == [1, 5, 9, 21]

    convert_main(["--input", str(src), "--output", str(dst)])
    ours = torch.load(dst, weights_only=True)  # plain types only: no safe globals needed
    assert set(ours) == {"epoch", "state_dict", "best_metric", "config", "optimizer", "converted_from"}
    assert ours["epoch"] == 777 and ours["optimizer"] is None and ours["config"] is None
    assert type(ours["best_metric"]) is float and ours["best_metric"] == pytest.approx(0.9712, abs=0)
    assert ours["converted_from"] == str(src)
    expected = [f"backbone.{k}" for k in backbone_sd] + list(RECON)
    assert list(ours["state_dict"]) == expected  # head dropped, module. stripped, order kept
    assert all(torch.equal(ours["state_dict"][f"backbone.{k}"], v) for k, v in backbone_sd.items())
    assert os.listdir(dst.parent) == ["converted.pth.tar"]  # the temporary file was renamed


def test_converted_backbone_loads_strictly_and_reconstruction_is_kept(backbone_sd, tmp_path):
    original = original_checkpoint(backbone_sd, 0.5)
    converted = convert_state_dict(original["state_dict"])
    model = efficientnet_b4(pretrained=False)
    model.load_state_dict({k[len("backbone."):]: v for k, v in converted.items() if k.startswith("backbone.")},
                          strict=True)
    for key in RECON:
        assert converted[key] is original["state_dict"][f"module.{key}"]


def test_keys_it_cannot_place_are_listed(backbone_sd):
    sd = original_checkpoint(backbone_sd, 0.5)["state_dict"]
    sd["module.vis_decoder.conv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"cannot place 1 checkpoint keys .*\['vis_decoder\.conv\.weight'\]"):
        convert_state_dict(sd)
    sd.pop("module.vis_decoder.conv.weight")
    sd["module.backbone._blocks.3._strange.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"_blocks\.3\._strange\.weight"):
        convert_state_dict(sd)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker, src, dst = tmp_path / "pwned", tmp_path / "evil.pth.tar", tmp_path / "out.pth.tar"
    torch.save({"epoch": 1, "state_dict": {}, "best_metric": _Evil(str(marker))}, src)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refusing to load"):
        convert_file(str(src), str(dst))
    assert not marker.exists() and not dst.exists()


def test_verify_against_config_builds_the_model_and_loads_strictly(backbone_sd, tmp_path):
    config = str(ROOT / "experiments/MVTec-AD/config.yaml")
    cfg = load_config(config, opts=["net.backbone.kwargs.pretrained=False"])
    torch.manual_seed(0)
    reference = ModelHelper(cfg.net).state_dict()
    original = original_checkpoint(backbone_sd, 0.9)
    original["state_dict"] = {f"module.{k}": v for k, v in timm_to_lukemelas_model(reference).items()}
    src, dst = tmp_path / "ckpt.pth.tar", tmp_path / "converted.pth.tar"
    torch.save(original, src)
    converted = convert_file(str(src), str(dst), config)
    assert converted["config"]["net"][0]["type"] == "models.backbones.efficientnet_b4"
    assert list(converted["state_dict"]) == list(reference)
    original["state_dict"].pop("module.reconstruction.input_proj.weight")
    torch.save(original, src)
    with pytest.raises(RuntimeError, match="reconstruction.input_proj.weight"):
        convert_file(str(src), str(dst), config)


def timm_to_lukemelas_model(state_dict: dict) -> dict:
    """A whole model's state dict with the backbone in lukemelas keys, as the original has it."""
    backbone = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    out = {f"backbone.{k}": v for k, v in timm_to_lukemelas(backbone).items()}
    out.update({k: v for k, v in state_dict.items() if not k.startswith("backbone.")})
    return out
