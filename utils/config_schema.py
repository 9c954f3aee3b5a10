"""The tree of known config keys.

A config key that is not in this tree is an error (with the nearest known key), so a typo never
silently does nothing. Leaves are ``ANY`` or a check that returns an error text (or None); ``FREE``
marks a mapping whose keys are checked elsewhere (``kwargs`` against the signature of the callable
they feed); ``ListOf(entry)`` is a list of mappings, such as ``net`` and ``criterion``, whose entries
are addressed by ``name``.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, Optional

ANY = "any"
FREE = "free"

Check = Callable[[Any], Optional[str]]


def _int(lo: int = None) -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected an integer, got {v!r}"
        if lo is not None and v < lo:
            return f"expected an integer >= {lo}, got {v}"
        return None
    return check


def _num(lo: float = None, allow_none: bool = False) -> Check:
    def check(v):
        if v is None and allow_none:
            return None
        if isinstance(v, bool) or not isinstance(v, Real):
            return f"expected a number, got {v!r}"
        if lo is not None and v < lo:
            return f"expected a number >= {lo}, got {v}"
        return None
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


def _num_list(n: int) -> Check:
    def check(v):
        if (not isinstance(v, (list, tuple)) or len(v) != n
                or any(isinstance(x, bool) or not isinstance(x, Real) for x in v)):
            return f"expected a list of {n} numbers, got {v!r}"
        return None
    return check


def _str_list(v):
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        return f"expected a list of names, got {v!r}"
    return None


@dataclass(frozen=True)
class ListOf:
    entry: dict


_TYPED = {"type": ANY, "kwargs": FREE}
_VIS = {"save_dir": _str, "max_score": _num(allow_none=True), "min_score": _num(allow_none=True)}
_METRIC_LIST = ListOf({"name": ANY, "kwargs": FREE})

_DATASET_SPLIT = {
    "meta_file": _str, "root_dir": _str, "rebalance": _bool, "hflip": _bool, "vflip": _bool,
    "rotate": _bool,
    "colorjitter": {"brightness": ANY, "contrast": ANY, "saturation": ANY, "hue": ANY, "prob": ANY},
}

SCHEMA = {
    "version": ANY,
    "random_seed": _int(0),
    "port": _int(0),
    "reproduce": _bool,
    "device": _opt_str,
    "dataset": {
        "type": _str,
        "image_reader": dict(_TYPED),
        "train": dict(_DATASET_SPLIT),
        "test": dict(_DATASET_SPLIT),
        "input_size": _int_list(2), "pixel_mean": _num_list(3), "pixel_std": _num_list(3),
        "batch_size": _int(1), "workers": _int(0), "normals": ANY,
        "colorjitter": dict(_DATASET_SPLIT["colorjitter"]),
    },
    "criterion": ListOf({"name": _str, "type": _str, "kwargs": FREE}),
    "trainer": {
        "max_epoch": _int(1), "clip_max_norm": _num(0, allow_none=True), "val_freq_epoch": _int(1),
        "print_freq_step": _int(1), "tb_freq_step": _int(1),
        "lr_scheduler": dict(_TYPED),
        "optimizer": {"type": ANY, "kwargs": FREE,
                      "param_groups": ListOf({"module": ANY, "lr_scale": ANY, "weight_decay": ANY})},
        "warmup_epochs": _int(0), "accumulate_steps": _int(1), "early_stop_patience": _int(0),
        "amp": _bool, "compile": _bool,
        "feature_cache": {"enabled": _bool, "dtype": _str, "max_gb": _num(0)},
    },
    "saver": {
        "auto_resume": _bool, "always_save": _bool, "load_path": ANY, "resume_model": ANY,
        "save_dir": _str, "log_dir": _str,
    },
    "evaluator": {
        "save_dir": _str, "key_metric": _str,
        "metrics": {"auc": _METRIC_LIST, "ap": _METRIC_LIST, "f1max": _METRIC_LIST, "aupro": _METRIC_LIST},
        "vis_compound": dict(_VIS), "vis_single": dict(_VIS),
        "vis_max_images": ANY, "tb_images": ANY,
    },
    "frozen_layers": _str_list,
    "net": ListOf({"name": _str, "type": _str, "frozen": _bool, "prev": _opt_str, "kwargs": FREE}),
    # Written by load_config: where the config came from.
    "config_file": ANY, "exp_path": ANY,
}

# Keys holding file-system paths, resolved against the config file's folder. ``*`` = any list entry.
PATH_KEYS = (
    "dataset.image_reader.kwargs.image_dir",
    "dataset.train.meta_file", "dataset.test.meta_file",
    "dataset.train.root_dir", "dataset.test.root_dir",
    "saver.load_path", "saver.resume_model", "saver.save_dir", "saver.log_dir",
    "evaluator.save_dir", "evaluator.vis_compound.save_dir", "evaluator.vis_single.save_dir",
    "net.*.kwargs.save_recon.save_dir", "net.*.kwargs.pretrained",
)
