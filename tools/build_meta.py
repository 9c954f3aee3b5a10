"""Write train.json / test.json meta files (JSON lines) for a dataset on disk.

    python tools/build_meta.py mvtec --root data/MVTec-AD/mvtec_anomaly_detection --out data/MVTec-AD
    python tools/build_meta.py visa --root data/VisA
    python tools/build_meta.py folder --name bolt --train-good my/bolt/good --test-good my/bolt/test_good \
        --test-bad my/bolt/test_bad [--masks my/bolt/masks] --out data/mine [--image-dir data/mine]

`folder` appends a class to existing meta files in --out (replacing a class of the same name), so calling
it once per class builds one multi-class dataset. Set the config's image_reader.kwargs.image_dir to the
folder the printed paths are relative to.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cli import run_cli  # noqa: E402
from datasets.meta_builders import build_folder_meta, build_mvtec_meta, build_visa_meta  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="layout", required=True)
    mvtec = sub.add_parser("mvtec", help="MVTec-AD layout: <cls>/{train/good,test/<defect>,ground_truth/<defect>}")
    mvtec.add_argument("--root", required=True, help="folder holding the class folders (image_dir)")
    mvtec.add_argument("--out", required=True, help="folder for train.json / test.json")
    visa = sub.add_parser("visa", help="VisA: uses split_csv/1cls.csv")
    visa.add_argument("--root", required=True, help="folder holding split_csv/ and the class folders (image_dir)")
    visa.add_argument("--out", default=None, help="folder for train.json / test.json (default: --root)")
    folder = sub.add_parser("folder", help="one class from your own image folders (call once per class)")
    folder.add_argument("--name", required=True, help="class name (clsname)")
    folder.add_argument("--train-good", required=True, help="normal training images")
    folder.add_argument("--test-good", required=True, help="normal test images")
    folder.add_argument("--test-bad", required=True, help="defective test images (subfolders allowed)")
    folder.add_argument("--masks", default=None, help="masks named <stem>.png or <stem>_mask.png")
    folder.add_argument("--out", required=True, help="folder for train.json / test.json")
    folder.add_argument("--image-dir", default=None, help="paths are written relative to this (default: --out)")
    return parser.parse_args(argv)


def print_counts(counts, out_dir, image_dir):
    print(f"{'class':<20} {'train':>6} {'test good':>10} {'test bad':>9}")
    for clsname, row in counts.items():
        print(f"{clsname:<20} {row['train']:>6} {row['test_good']:>10} {row['test_defective']:>9}")
    print(f"wrote {os.path.join(out_dir, 'train.json')} and test.json; "
          f"set image_reader.kwargs.image_dir to {os.path.abspath(image_dir)}")


def main(argv=None):
    args = parse_args(argv)
    if args.layout == "mvtec":
        counts, out_dir, image_dir = build_mvtec_meta(args.root, args.out), args.out, args.root
    elif args.layout == "visa":
        out_dir = args.out or args.root
        counts, image_dir = build_visa_meta(args.root, out_dir), args.root
    else:
        counts = build_folder_meta(args.name, args.train_good, args.test_good, args.test_bad, args.out,
                                   masks=args.masks, image_dir=args.image_dir)
        out_dir, image_dir = args.out, args.image_dir or args.out
    print_counts(counts, out_dir, image_dir)


if __name__ == "__main__":
    run_cli(main)
