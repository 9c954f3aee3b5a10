"""The one resolver: every configured object is built from a dotted ``type`` through importlib.

Never ``eval`` or ``globals()``: a config names a path, and a wrong path is an error that names it.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, Iterable, Mapping


def _import_attr(module_name: str, attr: str) -> Any:
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def resolve(type_path: str, default_modules: Iterable[str] = ()) -> Callable:
    """Return the callable named by ``type_path``.

    A dotted path (``models.necks.MFCN``) is imported as module + attribute. A bare name
    (``AdamW``) is looked up in each of ``default_modules`` in order.
    """
    if not isinstance(type_path, str) or not type_path:
        raise ValueError(f"'type' must be a non-empty dotted path string, got {type_path!r}")
    candidates = []
    if "." in type_path:
        module_name, attr = type_path.rsplit(".", 1)
        candidates.append((module_name, attr))
    candidates += [(module, type_path) for module in default_modules]
    tried = []
    for module_name, attr in candidates:
        tried.append(f"{module_name}.{attr}")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only a missing *target* module means "not here"; a missing dependency inside it is a real error.
            if exc.name and not module_name.startswith(exc.name):
                raise
            continue
        if hasattr(module, attr):
            return getattr(module, attr)
    raise ValueError(f"cannot resolve type '{type_path}': tried {', '.join(tried)}; "
                     "give a dotted path 'package.module.Name' to an importable class or function")


def check_kwargs(fn: Callable, kwargs: Mapping[str, Any], where: str) -> None:
    """Raise if ``kwargs`` lacks a required argument of ``fn`` or holds a name that ``fn`` does not
    accept (typos are errors, not ignored)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call itself decide
        return
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty
                and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    missing = [n for n in required if n not in kwargs]
    if missing:
        raise ValueError(f"missing required argument(s) {', '.join(repr(m) for m in missing)} in {where}")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items()
                if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; accepted: {', '.join(accepted)}"
            raise ValueError(f"unknown argument '{key}' in {where}{hint}")


def instantiate(type_path: str, kwargs: Mapping[str, Any] | None = None,
                default_modules: Iterable[str] = (), where: str = "config", **extra: Any) -> Any:
    """Build ``resolve(type_path)(**kwargs, **extra)`` after checking the argument names."""
    fn = resolve(type_path, default_modules)
    all_kwargs = dict(kwargs or {})
    all_kwargs.update(extra)
    check_kwargs(fn, all_kwargs, f"{where} (type {type_path})")
    return fn(**all_kwargs)
