"""Checkpoints: plain dict, atomic writes, safe loading, strict model loading, exact resume."""
import os
import pickle
import random

import numpy as np
import pytest
import torch
from easydict import EasyDict
from torch import nn

from utils.checkpoint import (CHECKPOINT_VERSION, copy_checkpoint, load_checkpoint, load_model_state,
                              make_checkpoint, restore_training_state, save_checkpoint, to_plain)
from utils.lr_helper import build_scheduler
from utils.misc_helper import capture_rng_state, restore_rng_state
from utils.optimizer_helper import build_optimizer

OPT = {"type": "AdamW", "kwargs": {"lr": 1e-3, "weight_decay": 1e-4}}
SCHED = {"type": "StepLR", "kwargs": {"step_size": 2, "gamma": 0.5}}


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 3)
        self.reconstruction = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 3))
        self.backbone.requires_grad_(False)

    def forward(self, x):
        return self.reconstruction(self.backbone(x))


def _setup(seed=0):
    torch.manual_seed(seed)
    net = _Net()
    opt = build_optimizer(OPT, net, ["reconstruction"])
    return net, opt, build_scheduler(SCHED, opt)


def _train_epoch(net, opt, sched):
    for _ in range(2):
        x = torch.randn(4, 3)  # global RNG on purpose: resume must restore it
        loss = net(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sched.step()


def _snapshot(net, opt):
    return ([p.detach().clone() for p in net.parameters()], [g["lr"] for g in opt.param_groups])


def test_resume_reproduces_uninterrupted_training(tmp_path):
    config = EasyDict({"trainer": {"max_epoch": 5, "optimizer": OPT}, "net": [{"name": "a"}]})
    net, opt, sched = _setup()
    for _ in range(2):
        _train_epoch(net, opt, sched)
    path = str(tmp_path / "ckpt.pth.tar")
    state = make_checkpoint(epoch=2, model=net, optimizer=opt, lr_scheduler=sched, config=config,
                            best_metric=np.float64(0.75), best_epoch=2, early_stop_counter=1,
                            metrics={"mean_pixel_auc": np.float32(0.75)}, thresholds=None)
    save_checkpoint(state, path)
    for _ in range(3):
        _train_epoch(net, opt, sched)
    expected = _snapshot(net, opt)

    net2, opt2, sched2 = _setup(seed=123)  # different init and RNG: all must come from the file
    progress = restore_training_state(load_checkpoint(path), net2, opt2, sched2, source=path)
    assert progress == {"epoch": 2, "best_metric": 0.75, "best_epoch": 2, "early_stop_counter": 1,
                        "metrics": {"mean_pixel_auc": 0.75}, "thresholds": None}
    for _ in range(3):
        _train_epoch(net2, opt2, sched2)
    got = _snapshot(net2, opt2)
    assert got[1] == expected[1]
    for a, b in zip(got[0], expected[0]):
        assert torch.equal(a, b)


def test_full_dict_is_plain_and_loads_weights_only(tmp_path):
    net, opt, sched = _setup()
    state = make_checkpoint(epoch=1, model=net, optimizer=opt, lr_scheduler=sched,
                            config=EasyDict({"a": {"b": [1, (2, 3)]}}), thresholds={"image": np.float64(0.5)})
    path = str(tmp_path / "c.pth")
    save_checkpoint(state, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["version"] == CHECKPOINT_VERSION and loaded["epoch"] == 1
    assert type(loaded["config"]) is dict and loaded["config"] == {"a": {"b": [1, (2, 3)]}}
    assert loaded["thresholds"] == {"image": 0.5} and type(loaded["thresholds"]["image"]) is float
    assert set(loaded["state_dict"]) == set(net.state_dict())


def test_save_refuses_non_plain_values_naming_the_key(tmp_path):
    with pytest.raises(TypeError, match=r"\['config'\].*EasyDict"):
        save_checkpoint({"config": EasyDict({"a": 1})}, str(tmp_path / "x.pth"))
    with pytest.raises(TypeError, match=r"\['m'\]\['auc'\].*float64"):
        save_checkpoint({"m": {"auc": np.float64(1.0)}}, str(tmp_path / "x.pth"))
    assert to_plain({"m": {"auc": np.float64(1.0)}}) == {"m": {"auc": 1.0}}
    assert not os.listdir(tmp_path)


def test_rng_round_trip_is_exact():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn(3)  # leaves a cached gaussian in some numpy versions' state
    state = capture_rng_state()
    first = (random.random(), np.random.randn(5).tolist(), torch.rand(4))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(state)
    second = (random.random(), np.random.randn(5).tolist(), torch.rand(4))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_crash_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pth.tar")
    save_checkpoint({"epoch": 1, "w": torch.arange(4)}, path)
    real_save = torch.save

    def crashing_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial bytes of a zip")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.arange(4))
    assert os.listdir(tmp_path) == ["ckpt.pth.tar"]  # no temporary file left behind


def test_copy_checkpoint_is_a_loadable_copy(tmp_path):
    src, dst = str(tmp_path / "ckpt.pth.tar"), str(tmp_path / "sub" / "ckpt_best.pth.tar")
    save_checkpoint({"epoch": 3}, src)
    copy_checkpoint(src, dst)
    assert load_checkpoint(dst) == {"epoch": 3}
    assert sorted(os.listdir(tmp_path / "sub")) == ["ckpt_best.pth.tar"]


class _Payload:
    """Unpickling this calls open(marker, 'w'): it creates a file (arbitrary code execution)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    live = tmp_path / "live_marker"
    pickle.loads(pickle.dumps(_Payload(str(live)))).close()
    assert live.exists()  # the payload does run under plain pickle
    marker = tmp_path / "marker"
    path = str(tmp_path / "evil.pth")
    torch.save({"state_dict": _Payload(str(marker))}, path)
    with pytest.raises(ValueError, match="refusing to load .*evil.pth"):
        load_checkpoint(path)
    assert not marker.exists()


def test_missing_and_non_checkpoint_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="notes.txt"):
        load_checkpoint(str(text))
    torch.save([1, 2], str(tmp_path / "list.pth"))
    with pytest.raises(ValueError, match="list.pth.*not a checkpoint dict"):
        load_checkpoint(str(tmp_path / "list.pth"))


def test_load_model_state_strict_lists_every_problem():
    net = _Net()
    saved = {f"module.{k}": v.clone() + 1 for k, v in net.state_dict().items()}
    report = load_model_state(_Net(), saved)  # DDP prefix stripped
    assert report.clean
    bad = dict(saved)
    del bad["module.backbone.bias"]
    bad["module.extra.weight"] = torch.zeros(1)
    bad["module.reconstruction.0.weight"] = torch.zeros(2, 2)
    target = _Net()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(RuntimeError) as info:
        load_model_state(target, bad)
    message = str(info.value)
    assert "backbone.bias" in message and "extra.weight" in message
    assert "reconstruction.0.weight saved (2, 2) vs model (5, 3)" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing loaded


def test_non_strict_load_applies_matching_keys_and_reports_the_rest():
    source = _Net()
    bad = {k: v.clone() + 1 for k, v in source.state_dict().items()}
    bad["reconstruction.0.weight"] = torch.zeros(2, 2)
    target = _Net()
    report = load_model_state(target, bad, strict=False)
    assert list(report.mismatched) == ["reconstruction.0.weight"] and not report.missing
    assert torch.equal(target.backbone.weight, bad["backbone.weight"])
    assert "shape-mismatched" in report.describe()


def test_restore_refuses_weights_only_checkpoints(tmp_path):
    net, opt, sched = _setup()
    with pytest.raises(ValueError, match="lacks .*optimizer"):
        restore_training_state({"epoch": 1, "state_dict": net.state_dict()}, net, opt, sched)
