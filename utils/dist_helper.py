"""Process group, rank/world size, device choice and collectives: the ONE place that picks them.

Launch modes, all without code edits:

* ``python tools/train_val.py ...``: ``RANK`` is absent -> one process, no process group.
* ``torchrun --nproc_per_node N ...`` or ``python -m torch.distributed.launch ...``: the launcher
  sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (the old
  launcher also passes ``--local-rank``; see :func:`add_launcher_args`).
* a manual launch (e.g. slurm) setting ``RANK``/``WORLD_SIZE`` but not ``MASTER_PORT``: the
  ``port`` argument (config key ``port``) is used.

Device: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU. Backend: nccl on CUDA, gloo on CPU.
Every helper works, as the identity, when no process group exists.
"""
from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

TIMEOUT_ENV = "UNIAD_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0  # a rank that dies must not hang the others forever


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its ranks, its device and whether a process group exists."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ------------------------------------------------------------------------------------- start-up
def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    """Accept ``--local-rank``/``--local_rank`` (passed by ``torch.distributed.launch``)."""
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                        help="set by torch.distributed.launch; LOCAL_RANK in the environment wins")


def dist_timeout() -> timedelta:
    """Collective timeout: env ``UNIAD_DIST_TIMEOUT`` (seconds) or 10 minutes."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError as exc:
        raise ValueError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from exc
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV}={text!r} must be a positive number of seconds")
    return timedelta(seconds=seconds)


def init_distributed(port: Optional[int] = None, device: Optional[str] = None,
                     local_rank: Optional[int] = None) -> DistInfo:
    """Read the launcher's environment, pick the device, and join the process group if needed.

    ``port``: used only when the launcher did not set ``MASTER_PORT``. ``device``: None or
    ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``. ``local_rank``: the launcher's
    ``--local-rank`` argument, used only when ``LOCAL_RANK`` is not in the environment.
    """
    rank, world_size, local = _launch_env(local_rank)
    chosen = select_device(device, local)
    if world_size > 1:
        _join_process_group(rank, world_size, chosen, port)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local, device=chosen,
                    distributed=world_size > 1)


def _launch_env(local_rank_arg: Optional[int]) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the environment; one process when RANK is absent."""
    if "RANK" not in os.environ:
        return 0, 1, (0 if local_rank_arg is None else local_rank_arg)
    if "WORLD_SIZE" not in os.environ:
        raise RuntimeError("RANK is set but WORLD_SIZE is not; launch with torchrun or set both")
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    if "LOCAL_RANK" in os.environ:
        local = _env_int("LOCAL_RANK")
    elif local_rank_arg is not None:
        local = local_rank_arg
    else:  # manual launches: assume ranks fill each node's GPUs in order
        local = rank % max(torch.cuda.device_count(), 1)
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    return rank, world_size, local


def _env_int(name: str) -> int:
    text = os.environ[name]
    try:
        return int(text)
    except ValueError as exc:
        raise RuntimeError(f"environment variable {name}={text!r} is not an integer") from exc


def select_device(requested: Optional[str], local_rank: int) -> torch.device:
    """``cuda:local_rank`` (made current) when CUDA is requested or available, else CPU."""
    if requested not in (None, "auto", "cpu", "cuda"):
        raise ValueError(f"device {requested!r} is not one of auto, cpu, cuda")
    use_cuda = requested == "cuda" or (requested in (None, "auto") and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but CUDA is not available; use device: cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise RuntimeError(f"LOCAL_RANK={local_rank} but only {count} GPU(s) are visible; start at "
                           f"most {count} process(es) per node or set CUDA_VISIBLE_DEVICES")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _join_process_group(rank: int, world_size: int, device: torch.device,
                        port: Optional[int]) -> None:
    """init_process_group(env://) with nccl on CUDA, gloo on CPU, and a finite timeout."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if port is None:
            raise RuntimeError("MASTER_PORT is not set: launch with torchrun (--master_port N) or "
                               "set the config key 'port'")
        os.environ["MASTER_PORT"] = str(port)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=dist_timeout(),
                                device_id=device if device.type == "cuda" else None)
    except dist.DistNetworkError as exc:
        if "in use" in str(exc).lower() or "EADDRINUSE" in str(exc):
            port_used = os.environ["MASTER_PORT"]
            raise RuntimeError(
                f"port {port_used} on {os.environ['MASTER_ADDR']} is already in use: pass a free "
                f"one (torchrun --master_port N, or the config key 'port')") from exc
        raise


def find_free_port() -> int:
    """A TCP port free right now on this host (for single-node launches that choose one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cleanup() -> None:
    """Leave the process group (if any)."""
    if is_dist():
        dist.destroy_process_group()


# -------------------------------------------------------------------------------------- queries
def is_dist() -> bool:
    """True when a process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return model


def wrap_model(model: nn.Module, info: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap in DistributedDataParallel when distributed (the model must already be on info.device)."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters)


# ---------------------------------------------------------------------------------- collectives
def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_dist():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """A new tensor holding the mean of ``tensor`` over ranks (integers are promoted to float).

    The tensor must be on this process's device (CUDA for nccl).
    """
    out = tensor.detach().clone()
    if not out.is_floating_point():
        out = out.double()
    if is_dist():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= get_world_size()
    return out


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not is_dist():
        return [obj]
    gathered: list = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


ArrayLike = Union[np.ndarray, Sequence[Any]]


def gather_arrays(arrays: Mapping[str, ArrayLike]) -> dict[str, ArrayLike]:
    """Concatenate per-rank arrays key by key, in rank order (sizes may differ between ranks).

    Values are numpy arrays (joined along axis 0) or lists (joined). Every rank receives the
    result. Every rank must pass the same keys. Duplicates from a padding sampler are kept: the
    caller removes them (e.g. by file name).
    """
    parts = all_gather_object(dict(arrays))
    keys = list(parts[0])
    for rank, part in enumerate(parts):
        if list(part) != keys:
            raise RuntimeError(f"gather_arrays: rank {rank} sent keys {list(part)}, rank 0 sent {keys}")
    return {key: _concat([part[key] for part in parts], key) for key in keys}


def _concat(values: list, key: str) -> ArrayLike:
    if all(isinstance(v, np.ndarray) for v in values):
        return np.concatenate(values, axis=0)
    if all(isinstance(v, (list, tuple)) for v in values):
        return [item for v in values for item in v]
    kinds = sorted({type(v).__name__ for v in values})
    raise TypeError(f"gather_arrays: key '{key}' must hold numpy arrays or lists on every rank, "
                    f"got {kinds}")
