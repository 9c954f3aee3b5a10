"""Convert an original UniAD checkpoint to this repository's format (timm backbone keys, no DDP prefix).

    python tools/convert_official_ckpt.py --input ckpt.pth.tar --output converted.pth.tar \
        [--config experiments/MVTec-AD/config.yaml]

With ``--config`` the converted weights are loaded strictly into the model that config builds
(a key or shape mismatch is an error) and the config is stored in the checkpoint.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cli import run_cli  # noqa: E402
from models.ckpt_convert import convert_file  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="original checkpoint (e.g. ckpt.pth.tar)")
    parser.add_argument("--output", required=True, help="where to write the converted checkpoint")
    parser.add_argument("--config", default=None, help="config to verify the weights against (strict load)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    converted = convert_file(args.input, args.output, args.config)
    verified = f", verified against {args.config}" if args.config else ""
    print(f"wrote {args.output}: epoch {converted['epoch']}, best_metric {converted['best_metric']}, "
          f"{len(converted['state_dict'])} tensors{verified}")


if __name__ == "__main__":
    run_cli(main)
