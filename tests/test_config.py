"""Config loading: overrides, validation errors, derived values, path resolution, the resolver."""
import os
from pathlib import Path

import pytest
import yaml

from utils.config_helper import ConfigError, apply_opts, dump_config, load_config, parse_opts, read_yaml
from utils.registry import instantiate, resolve

ROOT = Path(__file__).resolve().parents[1]
MVTEC = ROOT / "experiments" / "MVTec-AD" / "config.yaml"


def _write(tmp_path, cfg, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_mvtec_derived_values_match_original_update_config():
    cfg = load_config(str(MVTEC))
    net = {e.name: e for e in cfg.net}
    assert net["backbone"].kwargs.outblocks == [1, 5, 9, 21]
    assert net["backbone"].kwargs.outstrides == [2, 4, 8, 16]
    assert net["neck"].kwargs.outplanes == [272]
    assert net["reconstruction"].kwargs.feature_size == [14, 14]


def test_derived_values_follow_names_not_positions(tmp_path):
    raw = read_yaml(str(MVTEC))
    raw["net"] = list(reversed(raw["net"]))  # [reconstruction, neck, backbone]
    net = {e.name: e for e in load_config(str(_write(tmp_path, raw))).net}
    assert net["reconstruction"].kwargs.feature_size == [14, 14]
    assert net["neck"].kwargs.outplanes == [272]


def test_input_size_256_gives_feature_size_16():
    cfg = load_config(str(MVTEC), ["dataset.input_size=[256,256]"])
    assert {e.name: e for e in cfg.net}["reconstruction"].kwargs.feature_size == [16, 16]


def test_input_size_not_divisible_names_input_size():
    with pytest.raises(ConfigError, match=r"dataset\.input_size"):
        load_config(str(MVTEC), ["dataset.input_size=[230,224]"])


def test_cifar_five_layers_give_720_channels():
    cfg = load_config(str(ROOT / "experiments/CIFAR-10/01234/config.yaml"))
    net = {e.name: e for e in cfg.net}
    assert net["backbone"].kwargs.outblocks == [1, 5, 9, 21, 31]
    assert net["neck"].kwargs.outplanes == [720]


def test_opts_override_list_entries_by_name_and_parse_yaml():
    cfg = load_config(str(MVTEC), ["net.backbone.kwargs.pretrained=False", "trainer.max_epoch=2",
                                   "criterion.FeatureMSELoss.kwargs.weight=0.5", "dataset.input_size=[128, 128]"])
    assert {e.name: e for e in cfg.net}["backbone"].kwargs.pretrained is False
    assert cfg.trainer.max_epoch == 2
    assert cfg.criterion[0].kwargs.weight == 0.5
    assert cfg.dataset.input_size == [128, 128]


def test_opts_may_add_known_optional_keys():
    cfg = load_config(str(MVTEC), ["trainer.early_stop_patience=3", "trainer.feature_cache.enabled=false"])
    assert cfg.trainer.early_stop_patience == 3
    assert cfg.trainer.feature_cache.enabled is False


@pytest.mark.parametrize("opt, message", [
    ("trainer.max_epocs=3", r"unknown config key 'trainer.max_epocs'; did you mean 'max_epoch'"),
    ("net.backbon.kwargs.pretrained=False", r"no entry named 'backbon'.*did you mean 'backbone'"),
    ("trainer.max_epoch", r"KEY=VALUE"),
    ("trainer.max_epoch=-1", r"'trainer.max_epoch': expected an integer >= 1"),
    ("dataset.batch_size=eight", r"'dataset.batch_size': expected an integer"),
    ("dataset.input_size=[224]", r"'dataset.input_size': expected a list of 2 integers"),
    ("saver.auto_resume=maybe", r"'saver.auto_resume': expected true or false"),
    ("net.backbone=1", r"names a list entry"),
])
def test_bad_opts_name_the_key(opt, message):
    with pytest.raises(ConfigError, match=message):
        load_config(str(MVTEC), [opt])


def test_yaml_typo_names_key_and_nearest(tmp_path):
    raw = read_yaml(str(MVTEC))
    raw["trainer"]["clip_max_nrom"] = raw["trainer"].pop("clip_max_norm")
    with pytest.raises(ConfigError, match=r"'trainer.clip_max_nrom'; did you mean 'clip_max_norm'"):
        load_config(str(_write(tmp_path, raw)))


def test_typo_inside_list_entry_is_caught(tmp_path):
    raw = read_yaml(str(MVTEC))
    raw["net"][0]["froze"] = True
    with pytest.raises(ConfigError, match=r"'net.backbone.froze'; did you mean 'frozen'"):
        load_config(str(_write(tmp_path, raw)))


def test_not_a_mapping_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_relative_paths_resolve_against_config_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(str(MVTEC))
    exp = MVTEC.parent
    assert cfg.exp_path == str(exp)
    assert cfg.dataset.train.meta_file == str((ROOT / "data/MVTec-AD/train.json").resolve())
    assert cfg.saver.save_dir == str(exp / "checkpoints")
    assert {e.name: e for e in cfg.net}["reconstruction"].kwargs.save_recon.save_dir == str(exp / "result_recon")
    # a string `pretrained` is a path too
    cfg = load_config(str(MVTEC), ["net.backbone.kwargs.pretrained=weights/b4.pth"])
    assert {e.name: e for e in cfg.net}["backbone"].kwargs.pretrained == str(exp / "weights/b4.pth")


def test_same_config_from_any_working_directory(tmp_path, monkeypatch):
    a = load_config(str(MVTEC))
    monkeypatch.chdir(tmp_path)
    b = load_config(os.path.relpath(MVTEC, tmp_path))
    assert a == b


def test_dump_config_round_trips(tmp_path):
    cfg = load_config(str(MVTEC))
    dump_config(cfg, str(tmp_path / "log" / "config.yaml"))
    again = yaml.safe_load((tmp_path / "log" / "config.yaml").read_text())
    assert again["net"][2]["kwargs"]["feature_size"] == [14, 14]


def test_parse_opts_values():
    assert parse_opts(["a=1", "b=[1, 2]", "c=null", "d=x", "e=1e-4"]) == [
        ("a", 1), ("b", [1, 2]), ("c", None), ("d", "x"), ("e", "1e-4")]


def test_apply_opts_does_not_touch_other_keys():
    raw = read_yaml(str(MVTEC))
    before = read_yaml(str(MVTEC))
    apply_opts(raw, ["trainer.max_epoch=3"])
    raw["trainer"]["max_epoch"] = before["trainer"]["max_epoch"]
    assert raw == before


def test_resolver_errors_name_the_path():
    assert resolve("os.path.join") is os.path.join
    assert resolve("join", ["os.path"]) is os.path.join
    with pytest.raises(ValueError, match="cannot resolve type 'models.necks.NoSuchNeck'"):
        resolve("models.necks.NoSuchNeck")
    with pytest.raises(ValueError, match="tried no_such_pkg.thing"):
        resolve("no_such_pkg.thing")


def test_instantiate_rejects_unknown_kwargs_with_nearest():
    def factory(alpha, beta=2):
        return alpha + beta

    import types
    import sys
    mod = types.ModuleType("_fake_factories")
    mod.factory = factory
    sys.modules["_fake_factories"] = mod
    assert instantiate("_fake_factories.factory", {"alpha": 1}) == 3
    with pytest.raises(ValueError, match=r"unknown argument 'bta'.*did you mean 'beta'"):
        instantiate("_fake_factories.factory", {"alpha": 1, "bta": 3}, where="net.x")
