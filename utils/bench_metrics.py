"""Metrics benchmark: the whole exact suite vs sklearn ``roc_auc_score`` on the same pixels, one run.

Synthetic MVTec-like data: smooth random maps plus fine noise (nearly every pixel score distinct,
as with real network outputs), 1-3 elliptic defects on ~73% of the images (~27% normal, like the
MVTec AD test set), defects raising the map so AUROC is well above 0.5.
Used by ``tools/benchmark.py metrics``; ``run_benchmark`` is the testable core.
"""
import importlib.metadata
import os
import platform
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from utils.eval_helper import performances

NAMES = [{"name": "mean"}, {"name": "std"}, {"name": "max", "kwargs": {"avgpool_size": [16, 16]}},
         {"name": "pixel"}]
FULL_SUITE = {"auc": NAMES, "ap": NAMES, "f1max": NAMES, "aupro": [{"name": "pixel"}]}
NORMAL_SHARE = 0.27


def _draw_defects(mask: np.ndarray, rng: np.random.Generator) -> None:
    """1-3 filled random ellipses (value 1) into the uint8 [S,S] ``mask``, in place."""
    size = mask.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        center = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(max(1, size // 40), max(2, size // 8), 2))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)


def synthetic_maps(n: int, size: int, classes: int, seed: int):
    """(fileinfos, preds float32 [n,size,size], masks uint8 [n,size,size]) for the benchmark."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 8, 8), dtype=np.float32)
    preds = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_LINEAR) for c in coarse])
    preds += 0.1 * rng.random(preds.shape, dtype=np.float32)
    masks = np.zeros(preds.shape, dtype=np.uint8)
    defective = rng.random(n) >= NORMAL_SHARE
    for i in np.flatnonzero(defective):
        _draw_defects(masks[i], rng)
        preds[i][masks[i] > 0] += np.float32(rng.uniform(0.1, 0.6))
    fileinfos = [{"clsname": f"class{i % classes:02d}", "height": size, "width": size,
                  "filename": f"class{i % classes:02d}/test/{'defect' if defective[i] else 'good'}/{i:04d}.png"}
                 for i in range(n)]
    return fileinfos, preds, masks


def _sklearn_pixel_aurocs(fileinfos, preds, masks) -> dict[str, float]:
    names = np.array([info["clsname"] for info in fileinfos])
    return {cls: roc_auc_score(masks[names == cls].ravel() > 0, preds[names == cls].ravel())
            for cls in sorted(set(names.tolist()))}


def _timed(fn, repeat: int):
    """(best wall seconds over ``repeat`` calls, last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _suite_peak_bytes(fileinfos, preds, masks) -> int:
    """Peak memory allocated during one suite run (numpy buffers are traced by tracemalloc)."""
    tracemalloc.start()
    try:
        performances(fileinfos, preds, masks, FULL_SUITE)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run_benchmark(n: int = 1725, size: int = 224, classes: int = 15, seed: int = 0, repeat: int = 1) -> dict:
    """Time the full suite and sklearn's per-class pixel AUROC on the same synthetic data.

    Returns suite_s, sklearn_s, ratio (suite / sklearn), peak_mib, max_auroc_diff, pixels, plus the inputs.
    """
    fileinfos, preds, masks = synthetic_maps(n, size, classes, seed)
    suite_s, metrics = _timed(lambda: performances(fileinfos, preds, masks, FULL_SUITE), repeat)
    sklearn_s, reference = _timed(lambda: _sklearn_pixel_aurocs(fileinfos, preds, masks), repeat)
    # The auc family reports max(A, 1 - A), so compare with sklearn's value under the same rule.
    diffs = [abs(metrics[f"{cls}_pixel_auc"] - max(ref, 1.0 - ref)) for cls, ref in reference.items()]
    return {"n": n, "size": size, "classes": classes, "seed": seed, "pixels": int(preds.size),
            "suite_s": suite_s, "sklearn_s": sklearn_s, "ratio": suite_s / sklearn_s,
            "peak_mib": _suite_peak_bytes(fileinfos, preds, masks) / 2**20,
            "max_auroc_diff": max(diffs), "mean_pixel_auc": metrics["mean_pixel_auc"],
            "mean_pixel_aupro": metrics["mean_pixel_aupro"], "n_metrics": len(metrics)}


def machine_info() -> str:
    """One line: platform, CPU count and the numeric library versions."""
    versions = ", ".join(f"{pkg} {importlib.metadata.version(pkg)}"
                         for pkg in ("numpy", "scikit-learn", "scipy", "torch"))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # shared machines: say how busy it was
    return (f"{platform.platform()}, {os.cpu_count()} CPUs (load average {load}), "
            f"Python {platform.python_version()}, {versions}")


def to_markdown(result: dict, command: str) -> str:
    """The PERFORMANCE.md section for ``result`` (from ``run_benchmark``)."""
    return "\n".join([
        "## Metrics: exact suite vs sklearn", "",
        f"Command: `{command}`  ",
        f"Machine: {machine_info()}", "",
        f"{result['n']} maps of {result['size']}x{result['size']} ({result['pixels']:,} pixels), "
        f"{result['classes']} classes, ~{NORMAL_SHARE:.0%} normal images, seed {result['seed']}.", "",
        "| measured in one run | value |", "| --- | --- |",
        f"| our whole suite: auc/ap/f1max on mean, std, max(16x16), pixel + aupro(0.3) on pixel "
        f"({result['n_metrics']} values) | {result['suite_s']:.2f} s |",
        f"| sklearn `roc_auc_score`, pixel AUROC of each class only | {result['sklearn_s']:.2f} s |",
        f"| ratio suite / sklearn (must be <= 1) | **{result['ratio']:.3f}** |",
        f"| peak memory allocated by the suite (tracemalloc) | {result['peak_mib']:.0f} MiB |",
        f"| max abs difference of our pixel AUROC to sklearn's | {result['max_auroc_diff']:.1e} |", "",
        "Why it is fast and still exact (`utils/metrics/`): per class, scores become integer keys whose",
        "order is the descending score order; the defective pixels (a few %) are sorted once together",
        "with their GT region ids (packed in one uint64 word), the normal pixels are sorted alone (SIMD",
        "integer sort), and two binary searches count the normal pixels above each distinct defective",
        "score. That gives every corner of the ROC, PR and PRO curves (the thresholds in between only",
        "add normal pixels at constant TP, which changes none of the metrics), shared by AUROC, AP,",
        "F1-max and AUPRO, with no loop over thresholds. `max` uses cv2's float64 box filter instead of",
        "`avg_pool2d`. The ratio is measured in one process; on this shared 2-core machine absolute",
        "times vary several-fold with load (the load average is in the machine line).", "",
    ])


def add_arguments(parser) -> None:
    """CLI options of ``tools/benchmark.py metrics``."""
    parser.add_argument("--n", type=int, default=1725, help="number of maps (MVTec AD test set: 1725)")
    parser.add_argument("--size", type=int, default=224, help="map side in pixels")
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs for each side")


def main(args) -> dict:
    """Run, print and check (ratio <= 1, AUROC equal to sklearn's); returns result + ``markdown``."""
    result = run_benchmark(args.n, args.size, args.classes, args.seed, args.repeat)
    command = (f"python tools/benchmark.py metrics --n {args.n} --size {args.size} "
               f"--classes {args.classes} --seed {args.seed}")
    print(f"suite {result['suite_s']:.2f} s | sklearn roc_auc_score {result['sklearn_s']:.2f} s | "
          f"ratio {result['ratio']:.3f} | peak {result['peak_mib']:.0f} MiB | "
          f"max |AUROC - sklearn| {result['max_auroc_diff']:.1e}")
    result["markdown"] = to_markdown(result, command)
    result["ok"] = result["ratio"] <= 1.0 and result["max_auroc_diff"] <= 1e-9
    if not result["ok"]:
        print("FAILED: the suite must be at most as slow as sklearn and its AUROC equal to sklearn's")
    return result


def write_doc_section(path: Path, section: str, markdown: str) -> None:
    """Write ``markdown`` between ``<!-- {section}:begin -->`` / ``<!-- {section}:end -->`` in ``path``,
    replacing only that section (created at the end, or the file created, when absent)."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    path = Path(path)
    text = path.read_text() if path.exists() else "# Performance\n\n"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    if (begin in text) != (end in text):
        raise ValueError(f"{path}: only one of {begin} / {end} found; fix the markers by hand")
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
