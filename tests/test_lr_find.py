"""The learning-rate range test: the sweep, the divergence stop, the suggestion, and the tool's outputs."""
import csv
import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from tests.test_train_val import make_config
from tools import lr_find
from utils.cli import run_cli
from utils.lr_finder import check_sweep, lr_at, range_test, suggest_lr


def test_sweep_is_exponential_from_start_to_end():
    lrs = [lr_at(i, 1e-6, 1e-1, 6) for i in range(6)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1e-1)
    assert np.allclose(np.diff(np.log10(lrs)), 1.0)


@pytest.mark.parametrize("start,end,n,culprit", [(0, 1, 10, "--start-lr"), (1e-3, 1e-4, 10, "--end-lr"),
                                                 (1e-7, 1, 1, "--num-iter"), (1e-7, math.inf, 10, "--end-lr")])
def test_impossible_sweeps_are_refused_by_name(start, end, n, culprit):
    with pytest.raises(ValueError, match=culprit):
        check_sweep(start, end, n)


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = np.logspace(-6, 0, 61)
    x = np.log10(lrs)
    loss = 1 / (1 + np.exp(4 * (x + 3))) + np.where(x > -1, 5 * (x + 1) ** 2, 0)  # falls fastest at 1e-3
    lr, method = suggest_lr(list(lrs), list(loss))
    assert method == "steepest" and lr == pytest.approx(1e-3, rel=0.01)


def test_short_curve_falls_back_to_a_tenth_of_the_min_loss_lr():
    lr, method = suggest_lr([1e-4, 1e-3, 1e-2], [1.0, 0.5, 3.0])
    assert method == "min/10" and lr == pytest.approx(1e-4)


def _toy_problem():
    """Least squares with curvature 2 (x = 1): plain SGD diverges for lr > 1."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)
    data = [{"x": torch.ones(4, 1), "y": torch.full((4, 1), 3.0)}]

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, batch):
            return {"pred": self.inner(batch["x"]), "y": batch["y"]}

    criterion = lambda out: {"mse": ((out["pred"] - out["y"]) ** 2).mean()}  # noqa: E731
    wrapped = Wrapped()
    return wrapped, data, criterion, torch.optim.SGD(wrapped.parameters(), lr=0.1)


def test_range_test_stops_when_the_loss_diverges():
    model, data, criterion, optimizer = _toy_problem()
    result = range_test(model, data, criterion, optimizer, start_lr=1e-3, end_lr=100.0, num_iter=50)
    assert "diverged" in result.stop_reason
    assert 1.0 < result.lrs[-1] < 100.0  # past the stability limit, well before the end
    assert result.smoothed[0] == pytest.approx(result.losses[0])  # the debiased average starts at the loss
    assert result.smoothed[-1] > 4 * min(result.smoothed)
    assert 1e-3 <= result.suggestion <= 1.0


@pytest.fixture(scope="module")
def probed(tmp_path_factory, tiny_dataset):
    """One tool run on the tiny data; torch.save must never be called (the probe saves nothing)."""
    exp = tmp_path_factory.mktemp("lr_find")
    cfg = make_config(exp, tiny_dataset)
    saves = []
    real_save = torch.save
    torch.save = lambda *args, **kwargs: saves.append(args)
    try:
        code = lr_find.main(["--config", str(cfg), "--start-lr", "1e-5", "--end-lr", "10", "--num-iter", "12"])
    finally:
        torch.save = real_save
    return exp, code, saves


def test_tool_writes_plot_and_csv_and_saves_no_weights(probed, capsys):
    exp, code, saves = probed
    assert code == 0 and saves == []
    assert not list(exp.rglob("*.pth*")) and not (exp / "checkpoints").exists()
    image = cv2.imread(str(exp / "lr_find/lr_find.png"))
    assert image is not None and image.shape == (540, 900, 3)
    assert (image[:, :, 0] > 150).any() and (image[:, :, 2] > 150).any()  # curves and the suggestion line
    rows = list(csv.DictReader((exp / "lr_find/lr_find.csv").open()))
    assert 3 <= len(rows) <= 12
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-5) and np.allclose(np.diff(np.log10(lrs)), 6 / 11, rtol=1e-4)
    assert all(math.isfinite(float(r["smoothed_loss"])) for r in rows)


def test_tool_suggestion_lies_in_the_swept_range(probed, tmp_path, tiny_dataset, capsys):
    cfg = make_config(tmp_path, tiny_dataset)
    with pytest.raises(SystemExit) as stop:
        run_cli(lr_find.main, ["--config", str(cfg), "--start-lr", "1e-4", "--end-lr", "1", "--num-iter", "4"])
    assert stop.value.code == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("suggested lr:")]
    assert len(line) == 1
    lr = float(line[0].split()[2])
    assert 1e-4 <= lr <= 1


def test_tool_refuses_a_bad_sweep_with_one_line(tmp_path, tiny_dataset, capsys):
    cfg = make_config(tmp_path, tiny_dataset)
    with pytest.raises(SystemExit) as stop:
        run_cli(lr_find.main, ["--config", str(cfg), "--start-lr", "0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: --start-lr 0.0 and --end-lr 1.0 must be finite")
