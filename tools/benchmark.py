"""Benchmarks: ``python tools/benchmark.py {metrics,...,all} [options] [--doc PATH]``.

Each subcommand is a package module (table below) exposing ``add_arguments(parser)`` and
``main(args) -> dict``; the dict's ``markdown`` is written as that subcommand's section of
docs/PERFORMANCE.md (between ``<!-- NAME:begin -->`` / ``<!-- NAME:end -->``) and ``ok`` False
makes the exit status 1. ``all`` runs every subcommand with its defaults.
"""
import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.bench_metrics import write_doc_section  # noqa: E402  (needs ROOT on sys.path)

# subcommand -> (module, help). Add a row to add a benchmark.
SUBCOMMANDS = {
    "metrics": ("utils.bench_metrics", "exact metrics suite vs sklearn roc_auc_score on the same pixels"),
    "train": ("utils.bench_train", "original training step vs our cached epoch, FLOPs, peak share, memory"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        importlib.import_module(module).add_arguments(sub_parser)
        _add_doc_option(sub_parser)
    _add_doc_option(sub.add_parser("all", help="every benchmark with its defaults"))
    return parser


def _add_doc_option(parser) -> None:
    parser.add_argument("--doc", default=str(ROOT / "docs" / "PERFORMANCE.md"),
                        help="markdown file whose section to (re)write; '' to write nothing")


def run_one(name: str, args) -> bool:
    """Run subcommand ``name`` with parsed ``args``; write its doc section; True when it passed."""
    result = importlib.import_module(SUBCOMMANDS[name][0]).main(args)
    if args.doc:
        write_doc_section(Path(args.doc), name, result["markdown"])
        print(f"wrote section '{name}' of {args.doc}")
    return bool(result.get("ok", True))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = list(SUBCOMMANDS) if args.command == "all" else [args.command]
    passed = [run_one(name, parser.parse_args([name, "--doc", args.doc])
                      if args.command == "all" else args) for name in names]
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
