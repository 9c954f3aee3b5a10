"""Config loading: YAML -> validated EasyDict with overrides, derived values and resolved paths.

``load_config(path, opts)`` is the only way tools read a config, so every tool shares the same rules:

* ``yaml.safe_load`` only;
* ``--opts KEY=VALUE``: dotted keys, entries of the ``net`` / ``criterion`` lists addressed by their
  ``name`` (``net.backbone.kwargs.pretrained=False``), values parsed as YAML scalars or lists;
* every key is checked against ``utils.config_schema.SCHEMA``: an unknown key names the nearest one;
* the values the original's ``update_config`` derives (backbone blocks/strides, neck outplanes,
  reconstruction feature_size) are computed here, looking modules up by ``name``;
* relative paths are resolved against the config file's folder, so a run behaves the same from
  any working directory.
"""
from __future__ import annotations

import copy
import difflib
import os
from typing import Any, Iterable, Sequence

import yaml
from easydict import EasyDict

from utils.config_schema import ANY, FREE, PATH_KEYS, SCHEMA, ListOf, missing_required


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the fix."""


# ---------------------------------------------------------------------------------------------
# reading and validating

def read_yaml(path: str) -> dict:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _nearest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"


def validate(cfg: Any, schema: Any = SCHEMA, where: str = "") -> None:
    """Raise ``ConfigError`` for an unknown key or a value that fails its check."""
    if schema is ANY or schema is FREE:
        if schema is FREE and cfg is not None and not isinstance(cfg, dict):
            raise ConfigError(f"config key '{where}': expected a mapping of arguments, got {cfg!r}")
        return
    if callable(schema) and not isinstance(schema, (dict, ListOf)):
        problem = schema(cfg)
        if problem:
            raise ConfigError(f"config key '{where}': {problem}")
        return
    if isinstance(schema, ListOf):
        _validate_list(cfg, schema, where)
        return
    if not isinstance(cfg, dict):
        raise ConfigError(f"config key '{where}': expected a mapping, got {cfg!r}")
    for key, value in cfg.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in schema:
            raise ConfigError(f"unknown config key '{path}'{_nearest(key, schema)}")
        validate(value, schema[key], path)


def _validate_list(cfg: Any, schema: ListOf, where: str) -> None:
    if not isinstance(cfg, list):
        raise ConfigError(f"config key '{where}': expected a list of entries, got {cfg!r}")
    names = []
    for i, entry in enumerate(cfg):
        if not isinstance(entry, dict):
            raise ConfigError(f"config key '{where}[{i}]': expected a mapping, got {entry!r}")
        name = entry.get("name", str(i))
        if name in names:
            raise ConfigError(f"config key '{where}': the name '{name}' is used twice")
        names.append(name)
        validate(entry, schema.entry, f"{where}.{name}")


# ---------------------------------------------------------------------------------------------
# overrides

def parse_opts(opts: Sequence[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=[1,2]"]`` -> ``[("a.b", 1), ("c", [1, 2])]`` (values parsed as YAML)."""
    pairs = []
    for opt in opts:
        if "=" not in opt:
            raise ConfigError(f"override '{opt}' must look like KEY=VALUE (e.g. trainer.max_epoch=2)")
        key, raw = opt.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{opt}': the value is not valid YAML ({exc})") from None
        pairs.append((key.strip(), value))
    return pairs


def _child_schema(schema: Any, key: str, where: str) -> Any:
    if schema is FREE or schema is ANY:
        return ANY
    if isinstance(schema, dict):
        if key not in schema:
            raise ConfigError(f"unknown config key '{where}'{_nearest(key, schema)}")
        return schema[key]
    return ANY


def _descend(node: Any, schema: Any, key: str, where: str) -> tuple[Any, Any]:
    """One step of an override path: returns (child node, child schema), creating mappings."""
    if isinstance(schema, ListOf):
        names = [str(e.get("name")) for e in node]
        if key not in names:
            raise ConfigError(f"no entry named '{key}' in '{where.rsplit('.', 1)[0]}'{_nearest(key, names)}")
        return node[names.index(key)], schema.entry
    sub_schema = _child_schema(schema, key, where)
    if not isinstance(node, dict):
        raise ConfigError(f"cannot set '{where}': its parent is not a mapping")
    if key not in node or node[key] is None:
        node[key] = [] if isinstance(sub_schema, ListOf) else {}
    return node[key], sub_schema


def apply_opts(cfg: dict, opts: Sequence[str]) -> dict:
    """Apply ``KEY=VALUE`` overrides in place; unknown keys and list names are errors."""
    for key, value in parse_opts(opts):
        parts = key.split(".")
        node, schema = cfg, SCHEMA
        for i, part in enumerate(parts[:-1]):
            node, schema = _descend(node, schema, part, ".".join(parts[: i + 1]))
        last = parts[-1]
        if isinstance(schema, ListOf):
            raise ConfigError(f"override '{key}' names a list entry; set one of its keys instead "
                              f"(e.g. {key}.kwargs.<arg>=...)")
        _child_schema(schema, last, key)
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{key}': its parent is not a mapping")
        node[last] = value
    return cfg


# ---------------------------------------------------------------------------------------------
# derived values (what the original's update_config computes)

def _factory_name(entry: dict) -> str:
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def _entry(net: list, name: str | None, who: str) -> dict:
    for e in net:
        if e.get("name") == name:
            return e
    raise ConfigError(f"net entry '{who}' has prev '{name}', but no net entry has that name")


def _derive_backbone(entry: dict, info: dict) -> list[int]:
    """Fill ``outstrides`` (and ``outblocks``) from backbone_info; return the chosen planes."""
    kwargs = entry.setdefault("kwargs", {})
    layers = kwargs.get("outlayers")
    where = f"net.{entry.get('name')}.kwargs.outlayers"
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ConfigError(f"config key '{where}': expected a non-empty list of layers from {info['layers']}")
    bad = [l for l in layers if l not in info["layers"]]
    if bad:
        raise ConfigError(f"config key '{where}': layers {bad} do not exist; choose from {info['layers']}")
    idx = [info["layers"].index(l) for l in layers]
    kwargs["outstrides"] = [info["strides"][i] for i in idx]
    if info.get("blocks"):
        kwargs["outblocks"] = [info["blocks"][i] for i in idx]
    return [info["planes"][i] for i in idx]


def update_config(cfg: dict) -> dict:
    """Compute derived kwargs in place, looking net entries up by ``name`` and ``prev``.

    Backbones first, then necks, then reconstructions, so the list order does not matter.
    """
    from models.backbones import backbone_info  # imported late: config reading needs no torch otherwise

    net = cfg.get("net") or []
    planes, strides = {}, {}
    for entry in net:
        kind = _factory_name(entry)
        entry.setdefault("kwargs", {})
        if kind in backbone_info:
            planes[entry["name"]] = _derive_backbone(entry, backbone_info[kind])
            strides[entry["name"]] = entry["kwargs"]["outstrides"]
    for entry in (e for e in net if _factory_name(e) == "MFCN"):
        _derive_neck(entry, _entry(net, entry.get("prev"), entry["name"]), planes, strides)
    for entry in (e for e in net if _factory_name(e) == "UniAD"):
        _derive_reconstruction(cfg, entry, _entry(net, entry.get("prev"), entry["name"]), strides)
    return cfg


def _derive_neck(entry: dict, prev: dict, planes: dict, strides: dict) -> None:
    kwargs = entry["kwargs"]
    if prev["name"] in planes:
        total = [int(sum(planes[prev["name"]]))]
        if kwargs.get("outplanes") not in (None, total):
            raise ConfigError(f"config key 'net.{entry['name']}.kwargs.outplanes' is {kwargs['outplanes']} "
                              f"but the backbone layers give {total}; remove it to derive it")
        kwargs["outplanes"] = total
    if not kwargs.get("outstrides"):
        raise ConfigError(f"config key 'net.{entry['name']}.kwargs.outstrides' is required (e.g. [16])")
    strides[entry["name"]] = kwargs["outstrides"]


def _derive_reconstruction(cfg: dict, entry: dict, prev: dict, strides: dict) -> None:
    stride = (strides.get(prev["name"]) or prev.get("kwargs", {}).get("outstrides") or [None])[0]
    size = (cfg.get("dataset") or {}).get("input_size")
    if stride is None or size is None:
        return
    if any(s % stride for s in size):
        raise ConfigError(f"config key 'dataset.input_size' = {list(size)} must be divisible by the neck "
                          f"stride {stride} (e.g. {[max(stride, s // stride * stride) for s in size]})")
    entry["kwargs"]["feature_size"] = [s // stride for s in size]


# ---------------------------------------------------------------------------------------------
# paths

def _resolve_at(node: Any, parts: list[str], base: str) -> None:
    if not parts or node is None:
        return
    head, rest = parts[0], parts[1:]
    if head == "*":
        for entry in node if isinstance(node, list) else []:
            _resolve_at(entry, rest, base)
        return
    if not isinstance(node, dict) or head not in node:
        return
    if rest:
        _resolve_at(node[head], rest, base)
    elif isinstance(node[head], str) and node[head] and not os.path.isabs(os.path.expanduser(node[head])):
        node[head] = os.path.normpath(os.path.join(base, node[head]))
    elif isinstance(node[head], str):
        node[head] = os.path.expanduser(node[head])


def resolve_paths(cfg: dict, base: str) -> dict:
    """Make every path key of ``PATH_KEYS`` absolute, relative to ``base`` (the config's folder)."""
    for key in PATH_KEYS:
        _resolve_at(cfg, key.split("."), base)
    return cfg


# ---------------------------------------------------------------------------------------------

def load_config(path: str, opts: Sequence[str] = (), derive: bool = True) -> EasyDict:
    """Read, override, validate, derive and resolve a config.

    Returns an EasyDict with two extra keys: ``config_file`` (absolute path) and ``exp_path`` (its
    folder, against which every relative path was resolved).
    """
    raw = read_yaml(path)
    validate(raw)
    cfg = apply_opts(copy.deepcopy(raw), opts)
    validate(cfg)
    missing = missing_required(cfg)
    if missing:
        raise ConfigError(f"{path}: required config key(s) missing: {', '.join(missing)} "
                          "(see experiments/MVTec-AD/config.yaml for a complete config)")
    exp_path = os.path.dirname(os.path.abspath(path))
    if derive:
        update_config(cfg)
    resolve_paths(cfg, exp_path)
    cfg["config_file"], cfg["exp_path"] = os.path.abspath(path), exp_path
    return EasyDict(cfg)


def dump_config(cfg: dict, path: str) -> None:
    """Write the config a run actually used (plain YAML) next to its logs."""
    from utils.checkpoint import to_plain  # torch is not needed to read a config, only here

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(to_plain(cfg), f, sort_keys=False)
