"""Launch detection, single-process fallback and real 2-process gloo collectives."""
import argparse
import json
import os
import socket
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from utils import dist_helper as dh

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_VARS + (dh.TIMEOUT_ENV,):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_fallback_without_rank(clean_env):
    info = dh.init_distributed(port=12345)
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.distributed) == (0, 1, 0, False)
    assert info.device == expected and info.is_main
    assert not dh.is_dist() and dh.get_rank() == 0 and dh.get_world_size() == 1 and dh.is_main_process()
    t = torch.tensor([1.0, 3.0])
    assert torch.equal(dh.all_reduce_mean(t), t)
    assert dh.all_reduce_mean(torch.tensor([2])).dtype == torch.float64
    assert dh.all_gather_object({"a": 1}) == [{"a": 1}]
    out = dh.gather_arrays({"pred": np.ones((2, 3)), "names": ["a", "b"]})
    assert out["pred"].shape == (2, 3) and out["names"] == ["a", "b"]
    dh.barrier()
    dh.cleanup()


def test_launcher_args_and_env_parsing(clean_env):
    parser = argparse.ArgumentParser()
    dh.add_launcher_args(parser)
    assert parser.parse_args(["--local-rank=1"]).local_rank == 1
    assert parser.parse_args(["--local_rank", "2"]).local_rank == 2
    clean_env.setenv("RANK", "3")
    with pytest.raises(RuntimeError, match="WORLD_SIZE"):
        dh.init_distributed(device="cpu")
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="RANK=3"):
        dh.init_distributed(device="cpu")
    with pytest.raises(ValueError, match="gpu"):
        dh.select_device("gpu", 0)


def test_timeout_env(clean_env):
    assert dh.dist_timeout() == timedelta(minutes=10)
    clean_env.setenv(dh.TIMEOUT_ENV, "42")
    assert dh.dist_timeout() == timedelta(seconds=42)
    clean_env.setenv(dh.TIMEOUT_ENV, "ten")
    with pytest.raises(ValueError, match=dh.TIMEOUT_ENV):
        dh.dist_timeout()


def test_port_in_use_names_the_port(clean_env):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        clean_env.setenv("RANK", "0")
        clean_env.setenv("WORLD_SIZE", "2")
        clean_env.setenv(dh.TIMEOUT_ENV, "5")
        with pytest.raises(RuntimeError, match=f"port {port} .*in use.*master_port"):
            dh.init_distributed(port=port, device="cpu")
    assert not dh.is_dist()


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank: join with gloo, run the collectives, write what it saw."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), dh.TIMEOUT_ENV: "30"})
    torch.set_num_threads(1)
    info = dh.init_distributed(device="cpu")
    mean = dh.all_reduce_mean(torch.tensor([float(rank), 10.0 * rank]))
    # variable size per rank: rank r contributes r + 1 rows
    arrays = {"pred": np.full((rank + 1, 2), rank, dtype=np.float32),
              "names": [f"r{rank}_{i}" for i in range(rank + 1)]}
    gathered = dh.gather_arrays(arrays)
    objects = dh.all_gather_object({"rank": rank})
    dh.barrier()
    result = {"info": [info.rank, info.world_size, info.local_rank, str(info.device), info.distributed],
              "backend": torch.distributed.get_backend(), "mean": mean.tolist(),
              "pred": gathered["pred"].tolist(), "names": gathered["names"], "objects": objects,
              "is_main": dh.is_main_process(), "world": dh.get_world_size()}
    dh.cleanup()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)


def test_two_process_gloo_collectives(tmp_path, clean_env):
    port = dh.find_free_port()
    # fork: no re-import of torch per child (0.2 s instead of ~15 s); a watchdog bounds any hang
    context = mp.start_processes(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=False,
                                 start_method="fork")
    deadline = time.monotonic() + 60
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("2-process gloo workers did not finish within 60 s")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, res in enumerate(results):
        assert res["info"] == [rank, 2, rank, "cpu", True] and res["backend"] == "gloo"
        assert res["mean"] == [0.5, 5.0]
        assert res["pred"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
        assert res["names"] == ["r0_0", "r1_0", "r1_1"]
        assert res["objects"] == [{"rank": 0}, {"rank": 1}]
        assert res["is_main"] == (rank == 0) and res["world"] == 2
