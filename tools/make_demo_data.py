"""Generate the embedded demo dataset offline (no download): MVTec-like classes with exact defect masks.

    python tools/make_demo_data.py --out data/demo [--seed 0] [--baseline]

Same seed and library versions -> byte-identical files. `--baseline` also prints the raw-pixel
baseline (distance to the class's mean training image), which the data are built to defeat.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cli import run_cli  # noqa: E402
from datasets.demo_data import make_demo_data, raw_pixel_baseline  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (the config's image_dir), e.g. data/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=50, help="normal training images per class")
    parser.add_argument("--n-test", type=int, default=30, help="test images per class (about half defective)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--baseline", action="store_true", help="also print the raw-pixel baseline AUROCs")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    print(make_demo_data(args.out, args.seed, n_train=args.n_train, n_test=args.n_test, size=args.size))
    if args.baseline:
        image_auc, pixel_auc = raw_pixel_baseline(args.out)
        print(f"raw-pixel baseline: mean image AUROC {image_auc:.3f}, mean pixel AUROC {pixel_auc:.3f}")


if __name__ == "__main__":
    run_cli(main)
