"""Score images with a trained model: anomaly maps, overlays and decisions (see docs/INFERENCE.md).

    python tools/infer.py --config experiments/MVTec-AD/config.yaml \
        --checkpoint experiments/MVTec-AD/checkpoints/ckpt_best.pth.tar --input PATH --output DIR \
        [--class-name NAME] [--threshold T] [--thresholds FILE] [--batch-size N] [--device cpu|cuda] \
        [--workers N] [--opts KEY=VALUE ...]

PATH: an image, a folder (searched recursively) or a meta file (JSON lines, ``filename`` relative
to the config's image_dir, ``clsname`` used as the class). DIR receives ``maps/<stem>.npy``
(float32 [H,W] at network resolution), ``overlays/<stem>.png`` (original resolution: globally
normalised overlay | self-normalised overlay) and ``results.csv`` (one row per input).
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cli import run_cli  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils.predictor import InferenceDataset, InputItem, Predictor, collect_inputs, keep_list, to_rgb  # noqa: E402
from utils.vis_helper import apply_ad_scoremap, normalize  # noqa: E402

CSV_FIELDS = ("filename", "class", "score", "threshold", "decision", "error", "threshold_source",
              "pixel_threshold", "map", "overlay")
_LOG = logging.getLogger("uniad.infer")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="UniAD inference: anomaly maps, overlays, decisions")
    parser.add_argument("--config", required=True, help="the experiment's config.yaml")
    parser.add_argument("--checkpoint", required=True, help="checkpoint (ckpt_best.pth.tar, or a converted original)")
    parser.add_argument("--input", required=True, help="image file, folder (recursive) or meta file (.json/.jsonl)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--class-name", default=None, help="class of the inputs (picks its threshold)")
    parser.add_argument("--threshold", type=float, default=None, help="fixed image-score threshold (overrides all)")
    parser.add_argument("--thresholds", default=None, help="thresholds.json to use instead of the checkpoint's")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward (default dataset.batch_size)")
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="default: config, else auto")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers reading images")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------ outputs
def overlay_panel(original: np.ndarray, score_map: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """uint8 RGB [h, 2w, 3]: the map (bilinear to the image size) as JET over the image, clipped and
    scaled to ``value_range`` on the left, min-max normalised on its own on the right."""
    height, width = original.shape[:2]
    resized = cv2.resize(np.asarray(score_map, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    low, high = value_range
    global_overlay = apply_ad_scoremap(original, normalize(np.clip(resized, low, high), high, low))
    return np.hstack([global_overlay, apply_ad_scoremap(original, normalize(resized))])


def _write_png(path: str, rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cv2.imwrite could not write {path}: check the output folder's permissions")


class OutputWriter:
    """Writes ``maps/<stem>.npy`` at once and ``overlays/<stem>.png`` at once when the overlay range
    is known; otherwise (no calibration) after the last batch, with the range of this run's maps."""

    def __init__(self, out_dir: str, value_range: Optional[tuple[float, float]], read_rgb: Callable[[str], np.ndarray]):
        self.maps_dir, self.overlays_dir = os.path.join(out_dir, "maps"), os.path.join(out_dir, "overlays")
        os.makedirs(self.maps_dir, exist_ok=True)
        os.makedirs(self.overlays_dir, exist_ok=True)
        self.value_range, self.read_rgb = value_range, read_rgb
        self.deferred: list[InputItem] = []
        self.low, self.high = np.inf, -np.inf

    def paths(self, stem: str) -> tuple[str, str]:
        return os.path.join(self.maps_dir, stem + ".npy"), os.path.join(self.overlays_dir, stem + ".png")

    def add(self, item: InputItem, score_map: np.ndarray, original: np.ndarray) -> None:
        map_path, overlay_path = self.paths(item.stem)
        np.save(map_path, np.asarray(score_map, dtype=np.float32))
        self.low, self.high = min(self.low, float(score_map.min())), max(self.high, float(score_map.max()))
        if self.value_range is None:
            self.deferred.append(item)
        else:
            _write_png(overlay_path, overlay_panel(original, score_map, self.value_range))

    def finish(self) -> None:
        """Overlays deferred for want of a calibrated range: this run's min / max over all maps."""
        for item in tqdm(self.deferred, desc="overlays", unit="img", disable=not self.deferred):
            map_path, overlay_path = self.paths(item.stem)
            _write_png(overlay_path, overlay_panel(self.read_rgb(item.source), np.load(map_path),
                                                   (self.low, self.high)))


def _row(item: InputItem, writer: OutputWriter, result: Optional[dict] = None, error: str = "") -> dict:
    map_path, overlay_path = writer.paths(item.stem)
    row = {"filename": item.name, "class": item.class_name or "", "error": error}
    if result is not None:
        decision = "" if result["is_anomaly"] is None else ("anomalous" if result["is_anomaly"] else "normal")
        row.update(score=f"{result['score']:.8g}", decision=decision, threshold_source=result["threshold_source"],
                   threshold="" if result["threshold"] is None else f"{result['threshold']:.8g}",
                   pixel_threshold="" if result["pixel_threshold"] is None else f"{result['pixel_threshold']:.8g}",
                   map=os.path.relpath(map_path, os.path.dirname(writer.maps_dir)),
                   overlay=os.path.relpath(overlay_path, os.path.dirname(writer.maps_dir)))
    return row


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        table = csv.DictWriter(handle, fieldnames=CSV_FIELDS, restval="")
        table.writeheader()
        table.writerows(rows)


# ---------------------------------------------------------------------------------------- run
def _score_batch(predictor: Predictor, batch: list, items: list, writer: OutputWriter, threshold) -> list[dict]:
    """Rows of one batch: the readable images scored together, the others listed with their error."""
    rows, good = [], [entry for entry in batch if entry["error"] is None]
    for entry in batch:
        if entry["error"] is not None:
            _LOG.warning("skipping %s: %s", items[entry["index"]].name, entry["error"])
            rows.append((entry["index"], _row(items[entry["index"]], writer, error=entry["error"])))
    if good:
        maps, scores = predictor.forward(torch.stack([entry["image"] for entry in good]))
        for entry, score_map, score in zip(good, maps, scores):
            item = items[entry["index"]]
            result = {"score": float(score), **predictor.decide(float(score), item.class_name, threshold)}
            writer.add(item, score_map, entry["original"])
            rows.append((entry["index"], _row(item, writer, result)))
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    """Score every input; return the results.csv rows (input order)."""
    predictor = Predictor(args.config, args.checkpoint, device=args.device, opts=args.opts, thresholds=args.thresholds)
    items = collect_inputs(args.input, args.class_name)
    batch_size = args.batch_size or int(predictor.cfg.dataset.get("batch_size", 8))
    loader = DataLoader(InferenceDataset(items, predictor), batch_size=batch_size, shuffle=False,
                        num_workers=args.workers, collate_fn=keep_list)
    writer = OutputWriter(args.output, predictor.overlay_range(),
                          lambda source: to_rgb(predictor.reader(source), predictor.color_mode))
    rows = []
    for batch in tqdm(loader, desc="infer", unit="batch"):
        rows += _score_batch(predictor, batch, items, writer, args.threshold)
    writer.finish()
    rows = [row for _, row in sorted(rows, key=lambda pair: pair[0])]
    write_csv(os.path.join(args.output, "results.csv"), rows)
    return rows


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    rows = run(args)
    failed = sum(1 for row in rows if row["error"])
    flagged = sum(1 for row in rows if row.get("decision") == "anomalous")
    print(f"{len(rows) - failed} image(s) scored, {flagged} anomalous, {failed} unreadable; "
          f"results in {os.path.join(args.output, 'results.csv')}")
    return 1 if failed == len(rows) else 0


if __name__ == "__main__":
    run_cli(main)
