"""End-to-end training runs on tiny data: outputs, logs, TensorBoard, exact resume, cache, DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tools import train_val
from tests.conftest import write_tiny_dataset
from utils.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def make_config(tmp_path: Path, data: Path, **trainer) -> Path:
    """The demo config shrunk to seconds: 64 px, width 32, 1+1 layers, no pretrained download."""
    cfg = yaml.safe_load((ROOT / "experiments/demo/config.yaml").read_text())
    cfg["dataset"]["image_reader"]["kwargs"]["image_dir"] = str(data)
    cfg["dataset"]["train"]["meta_file"] = str(data / "train.json")
    cfg["dataset"]["test"]["meta_file"] = str(data / "test.json")
    cfg["dataset"].update(input_size=[64, 64], batch_size=4, workers=0)
    cfg["trainer"].update(max_epoch=2, val_freq_epoch=1, print_freq_step=1, tb_freq_step=1, warmup_epochs=1)
    cfg["trainer"]["lr_scheduler"]["kwargs"]["T_max"] = 4
    cfg["trainer"].update(trainer)
    rec = cfg["net"][2]["kwargs"]
    rec.update(hidden_dim=32, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64)
    rec["neighbor_mask"]["neighbor_size"] = [1, 1]
    cfg["net"][0]["kwargs"]["pretrained"] = False
    cfg["evaluator"]["vis_compound"]["save_dir"] = "vis_compound"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(config: Path, *opts: str, evaluate: bool = False) -> int:
    argv = ["--config", str(config)] + (["-e"] if evaluate else []) + (["--opts", *opts] if opts else [])
    return train_val.main(argv)


def weights(path: Path) -> dict:
    return load_checkpoint(str(path))["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory, tiny_dataset):
    exp = tmp_path_factory.mktemp("exp2")
    cfg = make_config(exp, tiny_dataset)
    assert run(cfg) == 0
    return exp


def test_two_epochs_leave_checkpoints_logs_and_metrics(two_epoch_run):
    exp = two_epoch_run
    ckpt = load_checkpoint(str(exp / "checkpoints/ckpt.pth.tar"))
    assert ckpt["epoch"] == 2
    for key in ("state_dict", "optimizer", "lr_scheduler", "best_metric", "best_epoch", "config", "rng",
                "metrics", "early_stop_counter"):
        assert key in ckpt, key
    assert any(k.startswith("reconstruction.transformer.") for k in ckpt["state_dict"])
    assert (exp / "checkpoints/ckpt_best.pth.tar").is_file()
    log = (exp / "log/train.log").read_text()
    assert "Epoch: [1/2]\tIter: [1/3]" in log and "ETA" in log and "LR " in log
    assert "mean" in log and "pixel_auc" in log  # the metrics table
    lines = [json.loads(l) for l in (exp / "log/metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert "mean_pixel_auc" in lines[0] and "mean_max_auc" in lines[0]
    assert (exp / "log/config.yaml").is_file()


def test_tensorboard_has_train_and_val_scalars(two_epoch_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(two_epoch_run / "log"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "train/lr" in tags
    assert "val/mean_pixel_auc" in tags
    assert len(acc.Scalars("train/loss")) == 6  # 3 iterations x 2 epochs, every step


def test_resumed_run_equals_straight_run(tmp_path, tiny_dataset, two_epoch_run):
    cfg = make_config(tmp_path, tiny_dataset)
    assert run(cfg, "trainer.max_epoch=1") == 0
    assert load_checkpoint(str(tmp_path / "checkpoints/ckpt.pth.tar"))["epoch"] == 1
    assert run(cfg, "saver.auto_resume=True") == 0
    resumed = load_checkpoint(str(tmp_path / "checkpoints/ckpt.pth.tar"))
    straight = load_checkpoint(str(two_epoch_run / "checkpoints/ckpt.pth.tar"))
    assert resumed["epoch"] == 2
    assert_same_weights(resumed["state_dict"], straight["state_dict"])
    assert resumed["optimizer"]["state"].keys() == straight["optimizer"]["state"].keys()
    assert resumed["best_metric"] == straight["best_metric"]


def test_cache_and_no_cache_train_identical_weights(tmp_path, tiny_dataset, two_epoch_run):
    cfg = make_config(tmp_path, tiny_dataset)
    assert run(cfg, "trainer.feature_cache.enabled=False") == 0
    log = (tmp_path / "log/train.log").read_text()
    assert "feature cache off: trainer.feature_cache.enabled is false" in log
    assert "feature cache on" in (two_epoch_run / "log/train.log").read_text()
    assert_same_weights(weights(tmp_path / "checkpoints/ckpt.pth.tar"),
                        weights(two_epoch_run / "checkpoints/ckpt.pth.tar"))


def test_evaluate_only_writes_metrics_and_heatmaps(tmp_path, tiny_dataset, two_epoch_run):
    cfg = make_config(tmp_path, tiny_dataset)
    best = two_epoch_run / "checkpoints/ckpt_best.pth.tar"
    assert run(cfg, f"saver.load_path={best}", evaluate=True) == 0
    lines = (tmp_path / "log/metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] is None
    pngs = list((tmp_path / "vis_compound").rglob("*.png"))
    assert len(pngs) == 8  # every test image of both classes


def test_evaluate_without_checkpoint_names_the_path(tmp_path, tiny_dataset):
    cfg = make_config(tmp_path, tiny_dataset)
    with pytest.raises(FileNotFoundError, match="nope.pth.tar"):
        run(cfg, "saver.load_path=nope.pth.tar", evaluate=True)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(module: str, nproc: int, config: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m <module> --nproc_per_node=N tools/train_val.py --config CFG ARGS`` on CPU (gloo)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", module, f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(ROOT / "tools/train_val.py"), "--config", str(config), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_process_evaluation_equals_one_process(tmp_path, tiny_dataset, two_epoch_run):
    best = two_epoch_run / "checkpoints/ckpt_best.pth.tar"
    one = tmp_path / "one"
    two = tmp_path / "two"
    one.mkdir()
    two.mkdir()
    # Both sides in subprocesses with one thread each: the same arithmetic, only the sharding differs.
    # 10 test images, batch 4: one process runs batches of 4,4,2; two ranks run 4,1 and 4,1.
    data = write_tiny_dataset(tmp_path / "data", n_test=5)
    for exp, nproc in ((one, 1), (two, 2)):
        proc = _launch("torch.distributed.run", nproc, make_config(exp, data), "-e", "--opts",
                       f"saver.load_path={best}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    m1 = json.loads((one / "log/metrics.jsonl").read_text())
    m2 = json.loads((two / "log/metrics.jsonl").read_text())
    assert m1 == m2


def test_two_process_training_with_distributed_launch(tmp_path, tiny_dataset):
    cfg = make_config(tmp_path, tiny_dataset, max_epoch=1)
    proc = _launch("torch.distributed.launch", 2, cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(str(tmp_path / "checkpoints/ckpt.pth.tar"))["epoch"] == 1
    assert "2 process(es)" in (tmp_path / "log/train.log").read_text()
