"""Optimizer groups (config order, prefixes, scales) and per-epoch schedules with the original's timing."""
import math
import warnings

import pytest
import torch
from torch import nn

from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.lr_helper import EpochLR, build_scheduler
from utils.optimizer_helper import build_optimizer, load_optimizer_state

ADAMW = {"type": "AdamW", "kwargs": {"lr": 1e-4, "betas": [0.9, 0.999], "weight_decay": 1e-4}}


class _Recon(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6))
        self.decoder = nn.Linear(6, 4)


class _Net(nn.Module):
    """backbone (frozen) / neck (no params) / reconstruction, like ModelHelper's children."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.neck = nn.Identity()
        self.reconstruction = _Recon()
        self.backbone.requires_grad_(False)

    def forward(self, x):
        return self.reconstruction.decoder(self.reconstruction.encoder(self.backbone(x)))


def _ids(params):
    return [id(p) for p in params]


# ------------------------------------------------------------------------------------ optimizer
def test_default_groups_follow_trainable_names_and_skip_frozen_and_empty():
    net = _Net()
    opt = build_optimizer(ADAMW, net, ["neck", "reconstruction"])
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["name"] for g in opt.param_groups] == ["reconstruction"]
    assert _ids(opt.param_groups[0]["params"]) == _ids(net.reconstruction.parameters())
    assert tuple(opt.param_groups[0]["betas"]) == (0.9, 0.999) and opt.param_groups[0]["weight_decay"] == 1e-4
    net.backbone.requires_grad_(True)
    opt = build_optimizer(ADAMW, net, ["reconstruction", "backbone"])  # order is the caller's
    assert [g["name"] for g in opt.param_groups] == ["reconstruction", "backbone"]


def test_param_groups_prefixes_scales_and_default_group():
    cfg = dict(ADAMW, param_groups=[
        {"module": "reconstruction.decoder", "lr_scale": 0.5},
        {"module": "reconstruction.encoder.1", "lr_scale": 0.1, "weight_decay": 0.0},
    ])
    net = _Net()
    opt = build_optimizer(cfg, net, ["reconstruction"])
    names = [g["name"] for g in opt.param_groups]
    assert names == ["reconstruction.decoder", "reconstruction.encoder.1", "default"]
    dec, norm, rest = opt.param_groups
    assert _ids(dec["params"]) == _ids(net.reconstruction.decoder.parameters())
    assert _ids(norm["params"]) == _ids(net.reconstruction.encoder[1].parameters())
    assert _ids(rest["params"]) == _ids(net.reconstruction.encoder[0].parameters())
    assert dec["lr"] == pytest.approx(5e-5) and norm["lr"] == pytest.approx(1e-5)
    assert norm["weight_decay"] == 0.0 and dec["weight_decay"] == 1e-4 and rest["lr"] == 1e-4


def test_longest_prefix_wins():
    cfg = dict(ADAMW, param_groups=[{"module": "reconstruction", "lr_scale": 0.5},
                                    {"module": "reconstruction.decoder", "lr_scale": 0.1}])
    net = _Net()
    opt = build_optimizer(cfg, net, ["reconstruction"])
    assert [g["name"] for g in opt.param_groups] == ["reconstruction", "reconstruction.decoder"]
    assert _ids(opt.param_groups[1]["params"]) == _ids(net.reconstruction.decoder.parameters())


@pytest.mark.parametrize("entries, message", [
    ([{"module": "reconstruction.nothing", "lr_scale": 0.1}], "reconstruction.nothing"),
    ([{"module": "backbone", "lr_scale": 0.1}], "matches no trainable"),
    ([{"module": "reconstruction.decoder", "lr_sacle": 0.1}], "lr_sacle"),
    ([{"module": "reconstruction.decoder"}, {"module": "reconstruction.decoder"}], "more than once"),
])
def test_param_group_errors_name_the_entry(entries, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(dict(ADAMW, param_groups=entries), _Net(), ["reconstruction"])


def test_unknown_child_and_type_are_clear_errors():
    with pytest.raises(ValueError, match="reconstructon"):
        build_optimizer(ADAMW, _Net(), ["reconstructon"])
    with pytest.raises(ValueError, match="AdamWW"):
        build_optimizer({"type": "AdamWW", "kwargs": {"lr": 1e-3}}, _Net(), ["reconstruction"])
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(ADAMW, _Net(), ["neck"])


def _train(opt_cfg, steps=6):
    torch.manual_seed(0)
    net = _Net()
    opt = build_optimizer(opt_cfg, net, ["reconstruction"])
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = net(torch.randn(5, 4, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1)
        opt.step()
    return opt, [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("cfg", [ADAMW, {"type": "Adam", "kwargs": {"lr": 1e-3}},
                                 {"type": "SGD", "kwargs": {"lr": 0.1, "momentum": 0.9}}])
def test_foreach_is_chosen_and_bit_identical_to_the_per_tensor_loop(cfg):
    fast_opt, fast = _train(cfg)
    assert fast_opt.param_groups[0]["foreach"] is True
    loop_cfg = dict(cfg, kwargs=dict(cfg["kwargs"], foreach=False))
    loop_opt, loop = _train(loop_cfg)
    assert loop_opt.param_groups[0]["foreach"] is False  # the user's choice is kept
    for a, b in zip(fast, loop):
        assert torch.equal(a, b)


def test_optimizer_resume_is_exact_and_group_mismatch_is_refused(tmp_path):
    opt, _ = _train(ADAMW, steps=3)
    save_checkpoint({"optimizer": opt.state_dict()}, str(tmp_path / "o.pth"))
    saved = load_checkpoint(str(tmp_path / "o.pth"))["optimizer"]
    fresh = build_optimizer(ADAMW, _Net(), ["reconstruction"])
    load_optimizer_state(fresh, saved)
    for key, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(fresh.state_dict()["state"][key][name]))
    other = build_optimizer(dict(ADAMW, param_groups=[{"module": "reconstruction.decoder"}]), _Net(),
                            ["reconstruction"])
    with pytest.raises(ValueError, match="differ"):
        load_optimizer_state(other, saved)


# ------------------------------------------------------------------------------------ schedules
def _opt(lr=1e-4, groups=1):
    params = [[nn.Parameter(torch.zeros(1))] for _ in range(groups)]
    return torch.optim.SGD([{"params": p, "lr": lr * (i + 1)} for i, p in enumerate(params)], lr=lr)


def _original_lrs(torch_cls, kwargs, epochs, lr=1e-4, groups=1):
    """The original loop: train epoch e at the group lr, then scheduler.step(e) (closed form)."""
    opt = _opt(lr, groups)
    sched = torch_cls(opt, **kwargs)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecated epoch argument, exactly as the original
        for epoch in range(epochs):
            seen.append([g["lr"] for g in opt.param_groups])
            opt.step()
            sched.step(epoch)
    return seen


def _our_lrs(cfg, epochs, lr=1e-4, groups=1, warmup=0):
    opt = _opt(lr, groups)
    sched = build_scheduler(cfg, opt, warmup_epochs=warmup)
    seen = []
    for _ in range(epochs):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return seen


SCHEDULES = [
    (torch.optim.lr_scheduler.StepLR, "StepLR", {"step_size": 800, "gamma": 0.1}, 1000),
    (torch.optim.lr_scheduler.StepLR, "StepLR", {"step_size": 3, "gamma": 0.1}, 10),
    (torch.optim.lr_scheduler.MultiStepLR, "MultiStepLR", {"milestones": [2, 5, 5, 7], "gamma": 0.5}, 12),
    (torch.optim.lr_scheduler.CosineAnnealingLR, "CosineAnnealingLR", {"T_max": 9, "eta_min": 1e-6}, 25),
    (torch.optim.lr_scheduler.StepLR, "torch.optim.lr_scheduler.StepLR", {"step_size": 4}, 13),
]


@pytest.mark.parametrize("torch_cls, type_name, kwargs, epochs", SCHEDULES)
def test_per_epoch_lr_equals_the_original_step_epoch_loop_exactly(torch_cls, type_name, kwargs, epochs):
    expected = _original_lrs(torch_cls, kwargs, epochs, groups=2)
    ours = _our_lrs({"type": type_name, "kwargs": kwargs}, epochs, groups=2)
    assert ours == expected  # exact floats, every epoch, every group


def test_mvtec_schedule_decays_from_epoch_801():
    lrs = [g[0] for g in _our_lrs({"type": "StepLR", "kwargs": {"step_size": 800, "gamma": 0.1}}, 1000)]
    assert set(lrs[:801]) == {1e-4}
    assert lrs[801:] == [1e-4 * 0.1] * 199


def test_linear_warmup_composes_with_the_schedule():
    cfg = {"type": "CosineAnnealingLR", "kwargs": {"T_max": 10, "eta_min": 0.0}}
    plain = _our_lrs(cfg, 12, lr=1e-3)
    warm = _our_lrs(cfg, 12, lr=1e-3, warmup=4)
    for epoch in range(4):  # seed §11.1: base * (epoch + 1) / warmup on top of the schedule
        assert warm[epoch][0] == plain[epoch][0] * (epoch + 1) / 4
    assert warm[0][0] == 1e-3 * 1 / 4 and warm[3][0] == plain[3][0]
    assert warm[4:] == plain[4:]
    const = _our_lrs({"type": "StepLR", "kwargs": {"step_size": 100}}, 5, lr=2e-4, warmup=5)
    assert [g[0] for g in const] == [2e-4 * (e + 1) / 5 for e in range(5)]


def test_scheduler_resume_is_exact(tmp_path):
    cfg = {"type": "StepLR", "kwargs": {"step_size": 3, "gamma": 0.5}}
    full = _our_lrs(cfg, 10, warmup=2)
    opt = _opt()
    sched = build_scheduler(cfg, opt, warmup_epochs=2)
    for _ in range(4):
        opt.step()
        sched.step()
    path = str(tmp_path / "s.pth")
    save_checkpoint({"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict()}, path)
    ckpt = load_checkpoint(path)  # weights_only: the scheduler state is plain
    opt2 = _opt()
    sched2 = build_scheduler(cfg, opt2, warmup_epochs=2)
    opt2.load_state_dict(ckpt["optimizer"])
    sched2.load_state_dict(ckpt["lr_scheduler"])
    resumed = []
    for _ in range(4, 10):
        resumed.append([g["lr"] for g in opt2.param_groups])
        opt2.step()
        sched2.step()
    assert resumed == full[4:]


def test_other_dotted_scheduler_keeps_torch_timing_and_refuses_warmup():
    cfg = {"type": "torch.optim.lr_scheduler.ExponentialLR", "kwargs": {"gamma": 0.5}}
    lrs = [g[0] for g in _our_lrs(cfg, 4, lr=1.0)]
    assert lrs == [1.0, 0.5, 0.25, 0.125]
    with pytest.raises(ValueError, match="warmup_epochs"):
        build_scheduler(cfg, _opt(), warmup_epochs=2)


def test_scheduler_config_errors():
    with pytest.raises(ValueError, match="step_sise"):
        build_scheduler({"type": "StepLR", "kwargs": {"step_sise": 3}}, _opt())
    with pytest.raises(ValueError, match="T_max"):
        build_scheduler({"type": "CosineAnnealingLR", "kwargs": {}}, _opt())
    with pytest.raises(ValueError, match="StepLRR"):
        build_scheduler({"type": "StepLRR", "kwargs": {}}, _opt())
    with pytest.raises(ValueError, match="warmup"):
        EpochLR(_opt(), "StepLR", {"step_size": 2}, warmup_epochs=-1)
    assert math.isclose(EpochLR(_opt(), "StepLR", {"step_size": 2}).lr_at(1.0, 3), 0.1)


def test_missing_types_are_clear_errors():
    with pytest.raises(ValueError, match="trainer.optimizer needs a 'type'"):
        build_optimizer({"kwargs": {"lr": 1e-3}}, _Net(), ["reconstruction"])
    with pytest.raises(ValueError, match="trainer.lr_scheduler needs a 'type'"):
        build_scheduler(None, _opt())
