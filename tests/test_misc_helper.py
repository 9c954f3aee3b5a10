"""Logger, meters, seeding, transfer and the training log line."""
import logging
import random
import re

import numpy as np
import pytest
import torch

from utils.misc_helper import (AverageMeter, BestTracker, create_logger, format_eta, set_random_seed, to_device,
                               train_log_line)

LINE_RE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[\s*test_misc_helper.py\]\[line:\s*\d+\]"
                     r"\[    INFO\] hello$")


def test_logger_rank0_format_file_and_idempotence(tmp_path, capsys):
    log_file = tmp_path / "log" / "dec.log"
    logger = create_logger("uniad_test_rank0", str(log_file), rank=0)
    logger = create_logger("uniad_test_rank0", str(log_file), rank=0)  # again: no duplicates
    logger.info("hello")
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1 and LINE_RE.match(lines[0]), lines
    assert capsys.readouterr().out.count("hello") == 1
    assert len(logger.handlers) == 2


def test_logger_other_ranks_only_warn_to_console(tmp_path, capsys):
    logger = create_logger("uniad_test_rank1", str(tmp_path / "r1.log"), rank=1)
    logger.info("quiet")
    logger.warning("loud")
    out = capsys.readouterr().out
    assert "quiet" not in out and "loud" in out
    assert not (tmp_path / "r1.log").exists()
    assert logger.level == logging.WARNING


def test_average_meter_window_and_running_average():
    meter = AverageMeter(length=3)
    for value in [1, 2, 3, 4, 5]:
        meter.update(value)
    assert meter.val == 5 and meter.avg == 4 and meter.global_avg == 3
    running = AverageMeter()
    running.update(1.0, num=3)
    running.update(5.0, num=1)
    assert running.avg == 2.0 and running.global_avg == 2.0 and running.count == 4
    with pytest.raises(ValueError, match="length"):
        AverageMeter(-1)


def test_set_random_seed_follows_the_original_powers():
    set_random_seed(133)
    got = (np.random.rand(), torch.rand(2), random.random())
    assert got[0] == np.random.RandomState(133).rand()
    assert torch.equal(got[1], torch.rand(2, generator=torch.Generator().manual_seed(133 ** 2)))
    assert got[2] == random.Random(133 ** 4).random()
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    set_random_seed(133, reproduce=True)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_format_eta_and_log_line():
    assert format_eta(3725.4) == "1:02:05" and format_eta(90000) == "25:00:00" and format_eta(-3) == "0:00:00"
    bt, dt, loss = AverageMeter(1), AverageMeter(1), AverageMeter(1)
    bt.update(0.256)
    dt.update(0.01)
    loss.update(0.123456)
    line = train_log_line(3, 1000, 12, 454, bt, dt, loss, 1e-4, 3725)
    assert line == ("Epoch: [3/1000]\tIter: [12/454]\tTime 0.26 (0.26)\tData 0.01 (0.01)\t"
                    "Loss 0.12346 (0.12346)\tLR 0.00010\tETA 1:02:05")


def test_to_device_moves_tensors_only():
    batch = {"image": torch.ones(1, 3), "clsname": ["bottle"], "features": [torch.zeros(2)],
             "height": torch.tensor([5])}
    moved = to_device(batch, torch.device("meta"))
    assert moved["image"].device.type == "meta" and moved["features"][0].device.type == "meta"
    assert moved["clsname"] == ["bottle"] and batch["image"].device.type == "cpu"


def test_best_tracker_ties_nan_patience_and_state():
    tracker = BestTracker(patience=2)
    assert tracker.update(0.5, 10) and tracker.update(0.5, 20)  # ties refresh the best (original >=)
    assert tracker.best_epoch == 20
    assert not tracker.update(float("nan"), 30) and not tracker.should_stop
    assert not tracker.update(0.4, 40) and tracker.should_stop
    restored = BestTracker(patience=2)
    restored.load_state_dict(tracker.state_dict())
    assert restored.state_dict() == {"best_metric": 0.5, "best_epoch": 20, "early_stop_counter": 2}
    assert restored.should_stop and not BestTracker(0).should_stop
