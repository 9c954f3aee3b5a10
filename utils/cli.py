"""``run_cli(main)``: the ``__main__`` wrapper of every tool. User errors become one paragraph.

A user error is a problem with what the user gave us (config, data, checkpoint, machine limits),
reported by one of this repository's own checks. It is printed as ``error: <message>`` on stderr,
without a traceback, and the process exits with:

=====  ===========================================================================================
 0     success (``main`` returned 0 or None)
 2     user error: ``ConfigError``, ``FileNotFoundError``, ``MemoryError`` (feature-cache check),
       and ``ValueError`` / ``KeyError`` / ``RuntimeError`` raised by a ``raise`` statement in this
       repository's code (a config, data or checkpoint check); 2 is also argparse's usage error
 3     training diverged: ``NonFiniteLossError`` (retry with a lower lr; the last good checkpoint
       is kept)
 1     anything else: an unexpected error, shown with its full traceback (Python's default)
=====  ===========================================================================================

``UNIAD_TRACEBACK=1`` prints the full traceback of a user error too (the exit code stays the same).
Errors raised inside a DataLoader worker reach the main process re-wrapped by torch; their original
type, raise site and message are read from the embedded traceback text, so a corrupt image gives the
same one-line error with ``workers: 2`` as with ``workers: 0``.
"""
from __future__ import annotations

import linecache
import os
import re
import sys
import traceback
from typing import Callable, NoReturn, Optional, Sequence

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
TRACEBACK_ENV = "UNIAD_TRACEBACK"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A user-facing error of these types only when our own code raised it on purpose: the same types
# also come out of torch / numpy internals, and those deserve their traceback.
_CHECKED_TYPES = (ValueError, KeyError, RuntimeError)
_WORKER_RE = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.")
_FRAME_RE = re.compile(r'File "([^"]+)", line (\d+)')


def run_cli(main: Callable[..., Optional[int]], argv: Optional[Sequence[str]] = None) -> NoReturn:
    """Call ``main(argv)`` (``main()`` when ``argv`` is None) and exit with the code above."""
    try:
        code = main() if argv is None else main(list(argv))
    except Exception as exc:  # noqa: BLE001 - classified below; anything unknown is re-raised
        exit_code = exit_code_for(exc)
        if exit_code is None:
            raise
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            traceback.print_exc()
        print(format_user_error(exc), file=sys.stderr, flush=True)
        sys.exit(exit_code)
    sys.exit(int(code or 0))


def exit_code_for(exc: BaseException) -> Optional[int]:
    """2 or 3 for the user errors described in the module docstring, None for anything else."""
    if _is_instance(exc, "utils.engine", "NonFiniteLossError"):
        return EXIT_DIVERGED
    if _is_instance(exc, "utils.config_helper", "ConfigError"):
        return EXIT_USER_ERROR
    kind, filename, line = error_origin(exc)
    if kind in ("FileNotFoundError", "MemoryError"):
        return EXIT_USER_ERROR
    if kind in {t.__name__ for t in _CHECKED_TYPES} and _raised_here(filename, line):
        return EXIT_USER_ERROR
    return None


def _is_instance(exc: BaseException, module: str, name: str) -> bool:
    """isinstance without importing ``module`` (if it is not loaded, exc cannot be one of its)."""
    cls = getattr(sys.modules.get(module), name, None)
    return cls is not None and isinstance(exc, cls)


def error_origin(exc: BaseException) -> tuple[str, Optional[str], Optional[int]]:
    """(type name, file, line) of the innermost frame that raised ``exc``, looking through
    torch's DataLoader-worker wrapper (which keeps the worker's traceback as text)."""
    worker = _worker_parts(exc)
    if worker is not None:
        kind, frames, _ = worker
        return (kind, *frames[-1]) if frames else (kind, None, None)
    tb = exc.__traceback__
    if tb is None:
        return type(exc).__name__, None, None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return _base_kind(exc), tb.tb_frame.f_code.co_filename, tb.tb_lineno


def _base_kind(exc: BaseException) -> str:
    """The nearest builtin type name (a ``ConfigError`` is a ``ValueError``)."""
    for cls in type(exc).__mro__:
        if cls.__module__ == "builtins":
            return cls.__name__
    return type(exc).__name__


def _worker_parts(exc: BaseException) -> Optional[tuple[str, list, str]]:
    """(original type, [(file, line)], original message) of a DataLoader-worker error, else None."""
    text = str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else ""
    match = _WORKER_RE.match(text)
    if not match:
        return None
    frames = [(f, int(n)) for f, n in _FRAME_RE.findall(text)]
    last = [l for l in text.rstrip().splitlines() if l.strip()][-1]
    message = last.split(": ", 1)[1] if last.startswith(match.group(1)) and ": " in last else last
    return match.group(1), frames, message


def _raised_here(filename: Optional[str], line: Optional[int]) -> bool:
    """True when (filename, line) is a ``raise`` statement in this repository's own code."""
    if not filename or not line:
        return False
    path = os.path.abspath(filename)
    if not path.startswith(ROOT + os.sep) or "site-packages" in path or f"{os.sep}.venv{os.sep}" in path:
        return False
    return linecache.getline(path, line).lstrip().startswith("raise")


def user_message(exc: BaseException) -> str:
    """The message itself: a KeyError's text without repr quotes, a worker error's original text."""
    worker = _worker_parts(exc)
    if worker is not None:
        return worker[2]
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc) or type(exc).__name__


def format_user_error(exc: BaseException) -> str:
    """``error: <message>`` (prefixed with the rank in a multi-process run), one paragraph."""
    rank = os.environ.get("RANK")
    world = os.environ.get("WORLD_SIZE", "1")
    where = f" (rank {rank})" if rank is not None and world not in ("", "1") else ""
    text = " ".join(user_message(exc).split())
    return f"error{where}: {text} [{TRACEBACK_ENV}=1 shows the traceback]"
