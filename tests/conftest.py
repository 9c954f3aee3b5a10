"""Shared test set-up: offline hub, repository root importable, small thread count."""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning: on a loaded 2-core machine spinning threads make
# convolutions 10x slower (docs/PERFORMANCE.md). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

# The tests run tiny tensors, where a second thread costs more than it gives (and CI machines are
# shared); one thread also makes in-process runs reproducible bit for bit.
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def write_tiny_dataset(root: Path, classes=("alpha", "beta"), n_train=6, n_test=4, size=64, seed=0) -> Path:
    """A tiny MVTec-layout dataset with meta files: smooth coloured noise per class, square defects."""
    import cv2

    rng = np.random.default_rng(seed)
    train, test = [], []
    for c, cls in enumerate(classes):
        base = rng.uniform(60, 190, size=3)
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                img = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
                defective = split == "test" and i % 2 == 1
                sub = "bad" if defective else "good"
                rel = f"{cls}/{split}/{sub}/{i:03d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                rec = {"filename": rel, "label": int(defective), "label_name": sub, "clsname": cls}
                if defective:
                    y, x = rng.integers(8, size - 24, size=2)
                    img[y:y + 14, x:x + 14] = 255 - img[y:y + 14, x:x + 14]
                    mask = np.zeros((size, size), np.uint8)
                    mask[y:y + 14, x:x + 14] = 255
                    mrel = f"{cls}/ground_truth/bad/{i:03d}_mask.png"
                    (root / mrel).parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(root / mrel), mask)
                    rec["maskname"] = mrel
                cv2.imwrite(str(root / rel), img[:, :, ::-1])
                (train if split == "train" else test).append(rec)
    for name, recs in (("train.json", train), ("test.json", test)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))
