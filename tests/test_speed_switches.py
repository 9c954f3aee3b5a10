"""trainer.amp / trainer.compile: decisions, the engine's autocast, in-place compile, train_val wiring."""
import logging
import os

import pytest
import torch
from torch import nn

from tests.test_train_val import assert_same_weights, make_config, run, weights
from tools import train_val
from utils.engine import EpochPlan, run_evaluation, train_one_epoch
from utils.speed_switches import autocast, compile_child, resolve_amp

LOGGER = logging.getLogger("test_speed_switches")


def test_amp_is_ignored_on_cpu_with_one_log_line(caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        assert resolve_amp(True, torch.device("cpu"), LOGGER) is False
        assert resolve_amp(False, torch.device("cpu"), LOGGER) is False
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "trainer.amp ignored on cpu" in lines[0]


def test_autocast_is_bf16_when_enabled_and_nothing_when_not():
    model = nn.Linear(4, 4)
    with autocast(model, False):
        assert not torch.is_autocast_enabled("cpu")
        assert model(torch.randn(2, 4)).dtype == torch.float32
    with autocast(model, True):
        assert torch.is_autocast_enabled("cpu")
        assert model(torch.randn(2, 4)).dtype == torch.bfloat16


class _Recon(nn.Module):
    """A stand-in model: feature_align [B, 4] -> feature_rec, pred [B, 1, 2, 2]."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, batch):
        rec = self.linear(batch["feature_align"])
        pred = (rec - batch["feature_align"]).abs().sum(1).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
        return {"feature_rec": rec, "feature_align": batch["feature_align"], "pred": pred}


def _recording_criterion(dtypes):
    def criterion(outputs):
        dtypes.append(outputs["feature_rec"].dtype)
        return {"mse": nn.functional.mse_loss(outputs["feature_rec"], outputs["feature_align"])}
    return criterion


@pytest.mark.parametrize("amp,dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_train_one_epoch_runs_the_forward_under_autocast_only_with_plan_amp(amp, dtype):
    torch.manual_seed(0)
    model = _Recon()
    before = model.linear.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [{"feature_align": torch.randn(3, 4)} for _ in range(2)]
    dtypes = []
    train_one_epoch(model, batches, _recording_criterion(dtypes), optimizer, EpochPlan(0, 1, amp=amp), LOGGER)
    assert dtypes == [dtype, dtype]
    assert model.linear.weight.dtype == torch.float32  # the weights stay fp32
    assert not torch.equal(model.linear.weight, before)


@pytest.mark.parametrize("amp,dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_run_evaluation_runs_the_forward_under_autocast_only_with_amp(amp, dtype):
    batch = {"feature_align": torch.randn(2, 4), "mask": torch.zeros(2, 1, 2, 2), "filename": ["a", "b"]}
    dtypes = []
    results = run_evaluation(_Recon(), [batch], _recording_criterion(dtypes), amp=amp)
    assert dtypes == [dtype] and results.preds.dtype == "float32" and results.preds.shape == (2, 2, 2)


def test_compile_child_keeps_state_dict_keys_and_outputs():
    torch.manual_seed(0)
    parent = nn.Module()
    parent.reconstruction = _Recon()
    keys = list(parent.state_dict())
    batch = {"feature_align": torch.randn(3, 4)}
    expected = parent.reconstruction(batch)["feature_rec"]
    compile_child(parent, "reconstruction", LOGGER, backend="eager")
    assert list(parent.state_dict()) == keys  # checkpoints stay interchangeable
    assert torch.equal(parent.reconstruction(batch)["feature_rec"], expected)
    with pytest.raises(ValueError, match="no child module 'neck'"):
        compile_child(parent, "neck", LOGGER)


def test_train_val_amp_on_cpu_logs_and_trains_the_same_weights(tmp_path, tiny_dataset):
    plain, amp = tmp_path / "plain", tmp_path / "amp"
    for exp, opts in ((plain, ()), (amp, ("trainer.amp=True",))):
        exp.mkdir()
        assert run(make_config(exp, tiny_dataset, max_epoch=1), *opts) == 0
    assert "trainer.amp ignored on cpu" in (amp / "log/train.log").read_text()
    assert_same_weights(weights(plain / "checkpoints/ckpt.pth.tar"), weights(amp / "checkpoints/ckpt.pth.tar"))


@pytest.mark.skipif(os.environ.get("UNIAD_TEST_COMPILE") != "1",
                    reason="dynamo traces the tiny model for ~40 s on 2 shared cores (inductor: minutes); "
                           "run with UNIAD_TEST_COMPILE=1")
def test_train_val_compile_flag_compiles_the_reconstruction(tmp_path, tiny_dataset, monkeypatch):
    # The wiring is checked with dynamo's "eager" backend (same graph capture, no code generation):
    # inductor would take minutes to generate and build C++ on these CPUs.
    calls = []

    def eager_compile(model, name, logger):
        calls.append(name)
        compile_child(model, name, logger, backend="eager")

    monkeypatch.setattr(train_val, "compile_child", eager_compile)
    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    for exp, opts in ((plain, ()), (compiled, ("trainer.compile=True",))):
        exp.mkdir()
        assert run(make_config(exp, tiny_dataset, max_epoch=1), *opts) == 0
    assert calls == ["reconstruction"]
    assert "reconstruction compiled with torch.compile (eager)" in (compiled / "log/train.log").read_text()
    a, b = weights(plain / "checkpoints/ckpt.pth.tar"), weights(compiled / "checkpoints/ckpt.pth.tar")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
