"""The fused CPU dropout kernels of csrc/fused_dropout.c: built once per CPU and source, loaded with ctypes.

Training on CPU with dropout spends more time drawing masks and making element-wise passes than in
matrix products; these kernels fuse them (see the C file for the generator and the exact mask rule).
They need a C compiler with OpenMP (gcc by default, `CC` to choose). The library is built on first use
into `$UNIAD_KERNEL_CACHE` (default ~/.cache/uniad/kernels), named by a hash of the source, the flags
and the CPU, because it is compiled for the host CPU (-march=native). Several processes may build it at
once: each writes a private file and renames it into place.

When the build or load fails, or `UNIAD_FUSED_KERNELS=0`, `library()` returns None after one warning
and dropout.py uses its numpy path: the same distribution (p rounded to 2**-32), other random numbers,
slower training.

All tensor arguments are float32 (keep masks uint8), contiguous and on the CPU; the wrappers check it.
"""
import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch  # noqa: F401  (loads torch's libgomp first, so the kernels share its OpenMP threads)

SOURCE = Path(__file__).with_name("csrc") / "fused_dropout.c"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", "-fPIC", "-shared")
BUILD_TIMEOUT_S = 120
logger = logging.getLogger("global_logger")

_i64, _u64, _u32, _f32, _ptr = ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float, ctypes.c_void_p
_SIGNATURES = {
    "softmax_dropout_forward": (_ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _u64, _u32),
    "softmax_dropout_backward": (_ptr, _ptr, _ptr, _i64, _i64),
    "relu_keep_forward": (_ptr, _ptr, _i64, _u64, _u32),
    "dropout_add_forward": (_ptr, _ptr, _i64, _ptr, _i64, _f32, _u64, _u32),
    "dropout_scale": (_ptr, _ptr, _i64, _f32, _u64, _u32),
    "keep_mask_u8": (_ptr, _i64, _u64, _u32),
    "philox_words": (_ptr, _i64, _u64),
    "add_dropout_layernorm_forward": (_ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _i64, _i64, _f32, _f32, _u64,
                                      _u32),
    "add_dropout_layernorm_backward": (_ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _f32, _u64, _u32),
}
BLOCK_WORDS = 4096  # the C file's work-item size, which fixes the layernorm backward's partial sums


def cache_dir():
    return Path(os.environ.get("UNIAD_KERNEL_CACHE") or Path.home() / ".cache" / "uniad" / "kernels")


def _cpu_id():
    """The CPU model and feature flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return os.uname().machine
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(wanted)) or os.uname().machine


def library_path(compiler):
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join((compiler, *FLAGS)).encode(), _cpu_id().encode()):
        digest.update(part)
    return cache_dir() / f"fused_dropout-{digest.hexdigest()[:16]}.so"


def build(compiler, target):
    """Compiles SOURCE into `target` (atomically). Raises RuntimeError with the compiler's message."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *FLAGS, str(SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stderr.strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path):
    lib = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = None
    return lib


_disabled = 0  # > 0 inside `disabled()`


@contextlib.contextmanager
def disabled():
    """Within this block `library()` is None: the numpy fallback runs (for benchmarks and tests)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def library():
    """The loaded kernels, or None (disabled, or no working compiler: warned once)."""
    return None if _disabled else _build_and_load()


def forget():
    """Drop the loaded library, so the next `library()` checks the environment and the cache again."""
    _build_and_load.cache_clear()


@functools.lru_cache(maxsize=None)
def _build_and_load():
    if os.environ.get("UNIAD_FUSED_KERNELS", "1") == "0":
        return None
    compiler = os.environ.get("CC", "gcc")
    try:
        path = library_path(compiler)
        if not path.exists():
            build(compiler, path)
        return load(path)
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        logger.warning(
            "fused CPU dropout kernels unavailable (%s); training on CPU falls back to the slower numpy "
            "dropout path. Install gcc with OpenMP, or set UNIAD_FUSED_KERNELS=0 to silence this.", err
        )
        return None


def _ptr_of(tensor, dtype=torch.float32):
    if tensor.dtype != dtype or tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError(f"fused kernels need contiguous CPU {dtype} tensors, got {tensor.dtype} on "
                         f"{tensor.device} (contiguous: {tensor.is_contiguous()})")
    return tensor.data_ptr()


def softmax_dropout_(scores, mask, offset, seed, threshold):
    """scores [R, C] -> softmax(scores + mask) in place; returns dropped = softmax * keep [R, C].
    mask [M, C] (row r uses mask row r % M) or None; element (r, j) draws at flat index offset + r*C + j."""
    rows, cols = scores.shape
    dropped = torch.empty_like(scores)
    mask_ptr, mask_rows = (None, 1) if mask is None else (_ptr_of(mask), mask.shape[0])
    library().softmax_dropout_forward(_ptr_of(scores), mask_ptr, _ptr_of(dropped), rows, cols, mask_rows, offset,
                                      seed, threshold)
    return dropped


def softmax_dropout_backward_(grad, prob, dropped):
    """grad [R, C] (dL/dD) -> dL/dS in place, from P = softmax(S) and D = P * keep."""
    library().softmax_dropout_backward(_ptr_of(grad), _ptr_of(prob), _ptr_of(dropped), *grad.shape)
    return grad


def relu_keep(x, seed, threshold):
    """relu(x) * keep (no 1 / (1 - p) scale)."""
    out = torch.empty_like(x)
    library().relu_keep_forward(_ptr_of(out), _ptr_of(x), x.numel(), seed, threshold)
    return out


def dropout_add(residual, x, scale, seed, threshold):
    """residual + x * keep * scale, with `residual` (contiguous) repeating over x's leading elements."""
    if x.numel() % residual.numel():
        raise ValueError(f"residual of shape {list(residual.shape)} does not tile x of shape {list(x.shape)}")
    out = torch.empty_like(x)
    library().dropout_add_forward(_ptr_of(out), _ptr_of(residual), residual.numel(), _ptr_of(x), x.numel(),
                                  scale, seed, threshold)
    return out


def dropout_scale(x, scale, seed, threshold):
    """x * keep * scale."""
    out = torch.empty_like(x)
    library().dropout_scale(_ptr_of(out), _ptr_of(x), x.numel(), scale, seed, threshold)
    return out


def add_dropout_layernorm(residual, x, gamma, beta, eps, scale, seed, threshold):
    """LayerNorm over the last dim of residual + x * keep * scale, residual tiling x (contiguous).
    Returns (out, xhat, rstd): out and xhat like x, rstd [rows]."""
    cols = x.shape[-1]
    rows = x.numel() // cols
    out, xhat, rstd = torch.empty_like(x), torch.empty_like(x), torch.empty(rows)
    library().add_dropout_layernorm_forward(
        _ptr_of(out), _ptr_of(xhat), _ptr_of(rstd), _ptr_of(residual), residual.numel(), _ptr_of(x),
        _ptr_of(gamma), _ptr_of(beta), rows, cols, eps, scale, seed, threshold,
    )
    return out, xhat, rstd


def add_dropout_layernorm_backward(grad_out, xhat, rstd, gamma, scale, seed, threshold):
    """-> (dL/d(residual + dropped x), dL/dx, dL/dgamma, dL/dbeta) for the block above."""
    cols = xhat.shape[-1]
    rows = xhat.numel() // cols
    group = max(1, BLOCK_WORDS // cols)
    partial = torch.empty(-(-rows // group), 2, cols)
    grad_sum, grad_x = torch.empty_like(xhat), torch.empty_like(xhat)
    library().add_dropout_layernorm_backward(
        _ptr_of(grad_sum), _ptr_of(grad_x), _ptr_of(partial), _ptr_of(grad_out), _ptr_of(xhat), _ptr_of(rstd),
        _ptr_of(gamma), rows, cols, scale, seed, threshold,
    )
    grad_gamma, grad_beta = partial.sum(0)
    return grad_sum, grad_x, grad_gamma, grad_beta


def keep_mask(shape, seed, threshold):
    """uint8 tensor of `shape`: the keep decisions every kernel makes for this seed (flat index order)."""
    keep = torch.empty(shape, dtype=torch.uint8)
    library().keep_mask_u8(_ptr_of(keep, torch.uint8), keep.numel(), seed, threshold)
    return keep


def philox_words(count, seed):
    """The first `count` 32-bit words (as int64) of the generator for `seed` (for tests)."""
    words = torch.empty(count, dtype=torch.int32)
    library().philox_words(_ptr_of(words, torch.int32), count, seed)
    return words.to(torch.int64) & 0xFFFFFFFF
