"""Export a trained model to ONNX: normalised images [B,3,H,W] -> (anomaly_map [B,1,H,W], image_score [B]).

    python tools/export_onnx.py --config experiments/MVTec-AD/config.yaml \
        --checkpoint experiments/MVTec-AD/checkpoints/ckpt_best.pth.tar --output model.onnx \
        [--exporter torchscript|dynamo] [--opset 18] [--opts KEY=VALUE ...]

The export is checked in onnxruntime against PyTorch (batch 1 and 3) and fails if they differ.
See utils/onnx_export.py and docs/INFERENCE.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cli import run_cli  # noqa: E402
from utils.onnx_export import EXPORTERS, export_onnx  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="UniAD ONNX export")
    parser.add_argument("--config", required=True, help="the experiment's config.yaml")
    parser.add_argument("--checkpoint", required=True, help="checkpoint to export")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--exporter", default="torchscript", choices=EXPORTERS, help="torch.onnx exporter")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted |onnxruntime - PyTorch|, relative to max(1, largest map value)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = export_onnx(args.config, args.checkpoint, args.output, args.opts, args.exporter, args.opset,
                         args.tolerance)
    diffs = ", ".join(f"batch {b}: map {report.map_diff[b]:.2e}, score {report.score_diff[b]:.2e}"
                      for b in report.map_diff)
    print(f"wrote {args.output}; onnxruntime vs PyTorch max |diff|: {diffs}")
    return 0


if __name__ == "__main__":
    run_cli(main)
