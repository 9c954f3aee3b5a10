"""CIFAR-10 one-vs-rest anomaly detection (spec 3.3).

Training: the training images whose class is in `normals`. Test: every test image of a normal class plus
as many anomalous test images as there are normal ones (fewer if the anomalous classes have fewer),
sampled with `random.Random(seed)` (the original used Python's global RNG).
"""
import io
import os
import pickle
import random

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, Normalize, Resize
from torchvision.transforms.functional import to_tensor

BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The only globals a CIFAR-10 batch pickle may reference: numpy array reconstruction.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction (no code execution)."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch only holds "
                                         "numpy arrays, lists and strings")
        return super().find_class(module, name)


def load_batch(path):
    """Load one CIFAR-10 python batch (`data`, `labels`, ...) safely; returns a dict with str keys."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 file not found: {path}; put the extracted '{BASE_FOLDER}' folder "
                                "(cifar-10-python.tar.gz from the CIFAR-10 site) under dataset.*.root_dir")
    with open(path, "rb") as handle:
        batch = _ArrayOnlyUnpickler(io.BytesIO(handle.read()), encoding="latin1").load()
    if not isinstance(batch, dict) or not all(
            isinstance(v, (np.ndarray, list, str, bytes)) for v in batch.values()):
        raise ValueError(f"{path} is not a CIFAR-10 batch (a dict of numpy arrays / lists)")
    return batch


def load_split(root_dir, train):
    """(images uint8 [N,32,32,3], labels int64 [N], class names) of the train or test split."""
    folder = os.path.join(root_dir, BASE_FOLDER)
    batches = [load_batch(os.path.join(folder, name)) for name in (TRAIN_FILES if train else TEST_FILES)]
    for name, batch in zip(TRAIN_FILES if train else TEST_FILES, batches):
        if "data" not in batch or "labels" not in batch:
            raise ValueError(f"{os.path.join(folder, name)} lacks the 'data' / 'labels' entries of a CIFAR-10 batch")
    images = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
    labels = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
    classes = list(load_batch(os.path.join(folder, "batches.meta"))["label_names"])
    return images.transpose(0, 2, 3, 1), labels, classes


def select_indices(labels, normals, train, seed=0):
    """Indices of the split kept for one-vs-rest: normals only (train), or normals + as many anomalies (test)."""
    is_normal = np.isin(labels, list(normals))
    normal_idx = np.flatnonzero(is_normal).tolist()
    if train:
        return normal_idx
    anomal_idx = np.flatnonzero(~is_normal).tolist()
    sampled = random.Random(seed).sample(anomal_idx, min(len(normal_idx), len(anomal_idx)))
    return sorted(normal_idx + sampled)


class CIFAR10(Dataset):
    """One-vs-rest CIFAR-10.

    Item dict: `filename` "<classname>/<index in split>.jpg", `height`/`width` (the resized size),
    `label` 0 normal / 1 anomalous, `clsname` "cifar", `image` float32 [3,H,W] ImageNet-normalised,
    `mask` float32 [1,H,W] all 0 or all 1.
    """

    def __init__(self, root_dir, train, normals, input_size=224, pixel_mean=IMAGENET_MEAN,
                 pixel_std=IMAGENET_STD, seed=0):
        if not normals or not set(normals) <= set(range(10)):
            raise ValueError(f"dataset.normals={normals!r} must be a non-empty list of CIFAR-10 classes 0..9")
        self.images, labels, self.classes = load_split(root_dir, train)
        self.targets = labels
        self.normals = set(int(n) for n in normals)
        self.indices = select_indices(labels, self.normals, train, seed)
        # short side to input_size (CIFAR images are square); LANCZOS is what the removed ANTIALIAS was
        size = input_size[0] if isinstance(input_size, (list, tuple)) else input_size
        self.resize = Resize(int(size), InterpolationMode.LANCZOS)
        self.normalize = Normalize(pixel_mean, pixel_std)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, item):
        index = self.indices[item]
        target = int(self.targets[index])
        image = to_tensor(self.resize(Image.fromarray(self.images[index])))
        label = 0 if target in self.normals else 1
        height, width = image.shape[1:]
        return {"filename": f"{self.classes[target]}/{index}.jpg", "height": height, "width": width,
                "label": label, "clsname": "cifar", "image": self.normalize(image),
                "mask": image.new_full((1, height, width), float(label))}
