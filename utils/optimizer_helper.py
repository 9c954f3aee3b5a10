"""Build the optimizer over the trainable children, with ordered, named parameter groups.

Config (``trainer.optimizer``)::

    type: AdamW                 # a torch.optim name, or a dotted path
    kwargs: {lr: 0.0001, betas: [0.9, 0.999], weight_decay: 0.0001}
    param_groups:               # optional
      - {module: reconstruction.transformer.encoder, lr_scale: 0.1, weight_decay: 0.0}

Groups come in CONFIG order (the original built them from a set, whose order changes between
runs and can attach resumed optimizer state to the wrong group). Every group carries a ``name``.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from utils.dist_helper import unwrap_model
from utils.registry import instantiate, resolve

DEFAULT_MODULES = ("torch.optim",)
_GROUP_KEYS = ("module", "lr_scale", "weight_decay")


def build_optimizer(optim_cfg: Mapping[str, Any], model: nn.Module,
                    trainable_names: Sequence[str]) -> torch.optim.Optimizer:
    """The optimizer over the ``requires_grad`` parameters of the children ``trainable_names``.

    Without ``param_groups``: one group per trainable child that has parameters, named after it,
    in ``trainable_names`` order. With ``param_groups``: one group per entry (parameters whose name
    is the entry's ``module`` or lies under it; the longest matching prefix wins), with
    ``lr = kwargs.lr * lr_scale`` and an optional ``weight_decay``; the rest form a last group
    named ``default``. Build it after moving the model to its device: on CPU and CUDA the exact
    ``foreach`` implementation is chosen unless the kwargs choose one (``fused`` is faster but not
    bit-identical, so it is opt-in).
    """
    if not optim_cfg or not optim_cfg.get("type"):
        raise ValueError(f"trainer.optimizer needs a 'type' (e.g. AdamW), got {optim_cfg!r}")
    named = trainable_parameters(unwrap_model(model), trainable_names)
    kwargs = dict(optim_cfg.get("kwargs") or {})
    entries = optim_cfg.get("param_groups") or []
    if entries:
        groups = _custom_groups(named, entries, kwargs)
    else:
        groups = _child_groups(named, trainable_names)
    type_path = optim_cfg["type"]
    extra = _fast_impl(resolve(type_path, DEFAULT_MODULES), kwargs, groups)
    return instantiate(type_path, kwargs, DEFAULT_MODULES, where="trainer.optimizer",
                       params=groups, **extra)


def trainable_parameters(model: nn.Module, trainable_names: Sequence[str]
                         ) -> list[tuple[str, nn.Parameter]]:
    """(full name, parameter) of every ``requires_grad`` parameter of the named children, in order."""
    children = dict(model.named_children())
    named: list[tuple[str, nn.Parameter]] = []
    for child_name in trainable_names:
        if child_name not in children:
            raise ValueError(f"trainable layer '{child_name}' is not a child of the model "
                             f"(children: {list(children)}); check net names and frozen_layers")
        named += [(f"{child_name}.{n}", p) for n, p in children[child_name].named_parameters()
                  if p.requires_grad]
    if not named:
        raise ValueError(f"no trainable parameters in {list(trainable_names)}: the net list is empty or every "
                         "entry is frozen; set net.<name>.frozen: false for the module to train")
    return named


def _child_groups(named: list[tuple[str, nn.Parameter]], trainable_names: Sequence[str]
                  ) -> list[dict[str, Any]]:
    """One group per child with parameters, in ``trainable_names`` order."""
    groups = []
    for child_name in trainable_names:
        params = [p for n, p in named if n.split(".", 1)[0] == child_name]
        if params:
            groups.append({"params": params, "name": child_name})
    return groups


def _custom_groups(named: list[tuple[str, nn.Parameter]], entries: Sequence[Mapping[str, Any]],
                   kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Groups from ``param_groups`` entries (config order) plus a final ``default`` group."""
    prefixes = [_check_entry(entry, index, kwargs) for index, entry in enumerate(entries)]
    repeated = sorted({p for p in prefixes if prefixes.count(p) > 1})
    if repeated:
        raise ValueError(f"trainer.optimizer.param_groups lists module(s) {repeated} more than once")
    members: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in prefixes}
    rest = []
    for name, param in named:
        owner = _longest_prefix(name, prefixes)
        (members[owner] if owner is not None else rest).append(param)
    groups = []
    for entry, prefix in zip(entries, prefixes):
        if not members[prefix]:
            raise ValueError(f"trainer.optimizer.param_groups module '{prefix}' matches no trainable "
                             f"parameter (names look like '{named[0][0]}')")
        group = {"params": members[prefix], "name": prefix,
                 "lr": kwargs["lr"] * float(entry.get("lr_scale", 1.0))}
        if entry.get("weight_decay") is not None:
            group["weight_decay"] = float(entry["weight_decay"])
        groups.append(group)
    if rest:
        groups.append({"params": rest, "name": "default"})
    return groups


def _check_entry(entry: Mapping[str, Any], index: int, kwargs: Mapping[str, Any]) -> str:
    """Validate one ``param_groups`` entry; return its module prefix."""
    where = f"trainer.optimizer.param_groups[{index}]"
    unknown = [key for key in entry if key not in _GROUP_KEYS]
    if unknown or not entry.get("module"):
        raise ValueError(f"{where} needs 'module' and accepts only {list(_GROUP_KEYS)}, got "
                         f"{sorted(entry)}")
    if "lr" not in kwargs:
        raise ValueError(f"{where} scales the base lr: set trainer.optimizer.kwargs.lr")
    return str(entry["module"])


def _longest_prefix(name: str, prefixes: Sequence[str]) -> Optional[str]:
    """The longest prefix that is ``name`` itself or a module containing it."""
    hits = [p for p in prefixes if name == p or name.startswith(p + ".")]
    return max(hits, key=len) if hits else None


def _fast_impl(optimizer_cls: Any, kwargs: Mapping[str, Any], groups: list[dict[str, Any]]
               ) -> dict[str, Any]:
    """``{"foreach": True}`` when the class accepts it and the kwargs do not choose themselves.

    foreach gives bit-identical results to the per-tensor loop (tests check it on CPU) and is
    several times faster on CPU; on CUDA it is torch's own default.
    """
    if "foreach" in kwargs or "fused" in kwargs:
        return {}
    try:
        accepted = inspect.signature(optimizer_cls).parameters
    except (TypeError, ValueError):  # no introspectable signature: leave the class's default
        return {}
    devices = {p.device.type for group in groups for p in group["params"]}
    if "foreach" in accepted and devices <= {"cpu", "cuda"} and len(devices) == 1:
        return {"foreach": True}
    return {}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any],
                         source: str = "checkpoint") -> None:
    """Load a saved optimizer state after checking the groups match by name and size."""
    saved = state.get("param_groups", [])
    mine = optimizer.param_groups
    saved_desc = [(g.get("name"), len(g["params"])) for g in saved]
    mine_desc = [(g.get("name"), len(g["params"])) for g in mine]
    if saved_desc != mine_desc:
        raise ValueError(f"optimizer groups in {source} (name, size) {saved_desc} differ from this "
                         f"run's {mine_desc}; the trainable layers or param_groups changed")
    optimizer.load_state_dict(state)
