"""The tree of known config keys.

A config key that is not in this tree is an error (with the nearest known key), so a typo never
silently does nothing. Leaves are ``ANY`` or a check that returns an error text (or None); ``FREE``
marks a mapping whose keys are checked elsewhere (``kwargs`` against the signature of the callable
they feed); ``ListOf(entry)`` is a list of mappings, such as ``net`` and ``criterion``, whose entries
are addressed by ``name``.

The ``kwargs`` of built objects are checked twice: their names against the signature of the callable
they feed (registry), and here the values of the arguments this repository's objects take, by name
(``_NET_ARGS``, ``_OPTIMIZER_ARGS``, ...), so junk such as ``hidden_dim: ''`` is a config error
naming the key, not a traceback from inside torch (tests/test_config_fuzz.py checks every key).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, Optional

ANY = "any"
FREE = "free"

Check = Callable[[Any], Optional[str]]


def _int(lo: int = None, hi: int = None, why: str = "") -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected an integer, got {v!r}"
        if lo is not None and v < lo:
            return f"expected an integer >= {lo}, got {v}"
        if hi is not None and v > hi:
            return f"expected an integer <= {hi}{why}, got {v}"
        return None
    return check


def _num(lo: float = None, allow_none: bool = False, hi: float = None, above: bool = False,
         finite: bool = False) -> Check:
    """A real number (never nan; not infinite when ``finite``) >= lo (> lo when ``above``) and <= hi."""
    def check(v):
        if v is None and allow_none:
            return None
        if isinstance(v, bool) or not isinstance(v, Real) or math.isnan(v) or (finite and math.isinf(v)):
            return f"expected a {'finite ' if finite else ''}number, got {v!r}"
        if lo is not None and (v <= lo if above else v < lo):
            return f"expected a number {'>' if above else '>='} {lo}, got {v}"
        if hi is not None and v > hi:
            return f"expected a number <= {hi}, got {v}"
        return None
    return check


def _one_of(*choices) -> Check:
    def check(v):
        return None if v in choices and not isinstance(v, bool) else f"expected one of {list(choices)}, got {v!r}"
    return check


def _bool(v):
    return None if isinstance(v, bool) else f"expected true or false, got {v!r}"


def _str(v):
    return None if isinstance(v, str) and v else f"expected a non-empty string, got {v!r}"


def _opt_str(v):
    return None if v is None or isinstance(v, str) else f"expected a string or null, got {v!r}"


def _int_list(n: int, lo: int = 1) -> Check:
    def check(v):
        if (not isinstance(v, (list, tuple)) or len(v) != n
                or any(isinstance(x, bool) or not isinstance(x, int) or x < lo for x in v)):
            return f"expected a list of {n} integers >= {lo}, got {v!r}"
        return None
    return check


def _num_list(n: int, positive: bool = False, lo: float = None, below: float = None) -> Check:
    """A list of ``n`` finite numbers (each > 0 when ``positive``; in [lo, below) when given)."""
    def check(v):
        if (not isinstance(v, (list, tuple)) or len(v) != n
                or any(isinstance(x, bool) or not isinstance(x, Real) or not math.isfinite(x) for x in v)):
            return f"expected a list of {n} finite numbers, got {v!r}"
        if positive and any(x <= 0 for x in v):
            return f"expected {n} numbers > 0 (they divide), got {v!r}"
        if (lo is not None and any(x < lo for x in v)) or (below is not None and any(x >= below for x in v)):
            return f"expected {n} numbers in [{lo}, {below}), got {v!r}"
        return None
    return check


def _int_items(v) -> Optional[str]:
    """A non-empty list of integers >= 1 (layers, strides, planes)."""
    if (not isinstance(v, (list, tuple)) or not v
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in v)):
        return f"expected a non-empty list of integers >= 1, got {v!r}"
    return None


def _path_or_none(v):
    return None if v is None or (isinstance(v, str) and v) else f"expected a file path or null, got {v!r}"


def _bool_or_path(v):
    return None if isinstance(v, bool) or (isinstance(v, str) and v) else (
        f"expected true, false or a file path, got {v!r}")


def _option(fields: dict) -> Check:
    """Off (false / null / empty) or a mapping whose listed fields pass their checks."""
    def check(v):
        if not v:
            return None
        if not isinstance(v, dict):
            return f"expected false/null or a mapping with {list(fields)}, got {v!r}"
        return _fields(v, fields)
    return check


def _fields(v: dict, fields: dict) -> Optional[str]:
    for name, field_check in fields.items():
        if name in v:
            problem = field_check(v[name])
            if problem:
                return f"{name}: {problem}"
    return None


def _kwargs(fields: dict, required: tuple = (), allow_none: bool = True) -> Check:
    """``kwargs`` of a built object: a mapping; the listed arguments, where given, pass their checks.

    Other arguments are checked against the callable's signature when it is built (registry)."""
    def check(v):
        if v is None and allow_none and not required:
            return None
        if not isinstance(v, dict):
            return f"expected a mapping of arguments, got {v!r}"
        missing = [name for name in required if name not in v]
        if missing:
            return f"missing argument(s) {missing}"
        return _fields(v, fields)
    return check


def _str_list(v):
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        return f"expected a list of names, got {v!r}"
    return None


@dataclass(frozen=True)
class ListOf:
    entry: dict


_VIS = {"save_dir": _str, "max_score": _num(allow_none=True), "min_score": _num(allow_none=True)}
_METRIC_LIST = ListOf({"name": ANY, "kwargs": FREE})

# Value checks of the arguments the repository's own objects take, by argument name (a name means
# the same thing wherever it appears). Names not listed here are checked against the signature.
_COLORJITTER = {"brightness": _num(0), "contrast": _num(0), "saturation": _num(0), "hue": _num(0, hi=0.5),
                "prob": _num(0, hi=1)}
_READER_ARGS = {"image_dir": _str, "color_mode": _one_of("RGB", "BGR", "GRAY")}
_NET_ARGS = {
    "pretrained": _bool_or_path, "outlayers": _int_items, "outstrides": _int_items, "outplanes": _int_items,
    "feature_size": _int_list(2), "hidden_dim": _int(1), "nhead": _int(1), "num_encoder_layers": _int(0),
    "num_decoder_layers": _int(0), "dim_feedforward": _int(1), "dropout": _num(0, hi=1), "activation": _str,
    "normalize_before": _bool, "pos_embed_type": _str,
    "feature_jitter": _option({"scale": _num(0, finite=True), "prob": _num(0, hi=1)}),
    "neighbor_mask": _option({"neighbor_size": _int_list(2), "mask": lambda v: None if (
        isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, bool) for x in v)) else
        f"expected three true/false values [encoder, decoder 1st, decoder 2nd], got {v!r}"}),
    "save_recon": _option({"save_dir": _str}),
    "initializer": _option({"method": _str, "std": _num(0, above=True)}),
}
_OPTIMIZER_ARGS = {"lr": _num(0, finite=True), "weight_decay": _num(0, finite=True), "eps": _num(0, above=True),
                   "momentum": _num(0), "dampening": _num(0), "nesterov": _bool, "amsgrad": _bool,
                   "betas": _num_list(2, lo=0, below=1)}
_SCHEDULER_ARGS = {"T_max": _int(1), "eta_min": _num(0, finite=True), "step_size": _int(1),
                   "gamma": _num(0, above=True, finite=True), "milestones": lambda v: None if (
                       isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool)
                                                            and x >= 0 for x in v))
                   else f"expected a list of epochs (integers >= 0), got {v!r}"}
_LOSS_ARGS = {"weight": _num(finite=True)}

_DATASET_SPLIT = {
    "meta_file": _str, "root_dir": _str, "rebalance": _bool, "hflip": _bool, "vflip": _bool,
    "rotate": _bool, "colorjitter": dict(_COLORJITTER),
}

# torch.cuda.manual_seed(seed ** 3) (the original's seeding) takes at most 2**64 - 1.
MAX_SEED = 2642245

SCHEMA = {
    "version": ANY,
    "random_seed": _int(0, MAX_SEED, " (the original seeds CUDA with seed**3, which must fit in 64 bits)"),
    "port": _int(0, 65535),
    "reproduce": _bool,
    "device": _one_of(None, "auto", "cpu", "cuda"),
    "dataset": {
        "type": _str,
        "image_reader": {"type": ANY, "kwargs": _kwargs(_READER_ARGS, required=("image_dir",))},
        "train": dict(_DATASET_SPLIT),
        "test": dict(_DATASET_SPLIT),
        "input_size": _int_list(2), "pixel_mean": _num_list(3), "pixel_std": _num_list(3, positive=True),
        "batch_size": _int(1), "workers": _int(0, 256, " (DataLoader worker processes)"), "normals": ANY,
        "colorjitter": dict(_COLORJITTER),
    },
    "criterion": ListOf({"name": _str, "type": _str, "kwargs": _kwargs(_LOSS_ARGS)}),
    "trainer": {
        "max_epoch": _int(1), "clip_max_norm": _num(0, allow_none=True), "val_freq_epoch": _int(1),
        "print_freq_step": _int(1), "tb_freq_step": _int(1),
        "lr_scheduler": {"type": ANY, "kwargs": _kwargs(_SCHEDULER_ARGS)},
        "optimizer": {"type": ANY, "kwargs": _kwargs(_OPTIMIZER_ARGS),
                      "param_groups": ListOf({"module": ANY, "lr_scale": ANY, "weight_decay": ANY})},
        "warmup_epochs": _int(0), "accumulate_steps": _int(1), "early_stop_patience": _int(0),
        "amp": _bool, "compile": _bool,
        "feature_cache": {"enabled": _bool, "dtype": _one_of("float32", "float16", "bfloat16"), "max_gb": _num(0)},
    },
    "saver": {
        "auto_resume": _bool, "always_save": _bool, "load_path": _path_or_none, "resume_model": _path_or_none,
        "save_dir": _str, "log_dir": _str,
    },
    "evaluator": {
        "save_dir": _str, "key_metric": _str,
        "metrics": {"auc": _METRIC_LIST, "ap": _METRIC_LIST, "f1max": _METRIC_LIST, "aupro": _METRIC_LIST},
        "vis_compound": dict(_VIS), "vis_single": dict(_VIS),
        "vis_max_images": ANY, "tb_images": _int(0),
    },
    "frozen_layers": _str_list,
    "net": ListOf({"name": _str, "type": _str, "frozen": _bool, "prev": _opt_str,
                     "kwargs": _kwargs(_NET_ARGS, allow_none=False)}),
    # Written by load_config: where the config came from.
    "config_file": ANY, "exp_path": ANY,
}

# Keys a section needs when it is present (``*`` = every entry of a list). The tools read them
# without a default; ``missing_required`` names the absent ones.
REQUIRED = (
    "dataset", "net", "net.*.name", "net.*.type", "criterion.*.name", "criterion.*.type",
    "dataset.image_reader.kwargs", "dataset.image_reader.kwargs.image_dir",
    "trainer.max_epoch", "trainer.val_freq_epoch", "trainer.print_freq_step",
    "trainer.optimizer", "trainer.optimizer.type", "trainer.lr_scheduler", "trainer.lr_scheduler.type",
    "saver.save_dir", "saver.log_dir", "evaluator.key_metric", "evaluator.metrics",
    "evaluator.vis_compound.save_dir", "evaluator.vis_single.save_dir",
)


def missing_required(cfg: dict) -> list[str]:
    """The ``REQUIRED`` keys absent from ``cfg`` (a key counts only where its parent is present)."""
    return [path for key in REQUIRED for path in _absent(cfg, key.split("."), "")]


def _absent(node: Any, parts: list, where: str) -> list[str]:
    head, rest = parts[0], parts[1:]
    if head == "*":
        entries = node if isinstance(node, list) else []
        return [p for i, e in enumerate(entries) for p in _absent(e, rest, f"{where}.{_entry_name(e, i)}")]
    if not isinstance(node, dict):
        return []
    path = f"{where}.{head}" if where else head
    if head not in node or node[head] is None:
        return [] if rest else [path]
    return _absent(node[head], rest, path) if rest else []


def _entry_name(entry: Any, index: int) -> str:
    return str(entry.get("name", index)) if isinstance(entry, dict) else str(index)


# Keys holding file-system paths, resolved against the config file's folder. ``*`` = any list entry.
PATH_KEYS = (
    "dataset.image_reader.kwargs.image_dir",
    "dataset.train.meta_file", "dataset.test.meta_file",
    "dataset.train.root_dir", "dataset.test.root_dir",
    "saver.load_path", "saver.resume_model", "saver.save_dir", "saver.log_dir",
    "evaluator.save_dir", "evaluator.vis_compound.save_dir", "evaluator.vis_single.save_dir",
    "net.*.kwargs.save_recon.save_dir", "net.*.kwargs.pretrained",
)
