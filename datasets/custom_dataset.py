"""Meta-file driven dataset (MVTec-AD, VisA, the demo data, users' folders): spec 3.1 / 3.2.

The meta file is JSON lines, one object per image:
`{"filename": "bottle/test/broken_large/000.png", "label": 1, "label_name": "defective",
  "maskname": "bottle/ground_truth/broken_large/000_mask.png", "clsname": "bottle"}`;
`filename` / `maskname` are relative to the image reader's `image_dir`.
"""
import json
import os

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor


def read_meta_file(meta_file):
    """Read and validate a JSON-lines meta file.

    Returns a list of `(line_number, meta)` (1-based line numbers, blank lines skipped), each meta a
    dict with `filename` (str), `label` (0/1), `clsname` (given or derived from `filename`) and
    optionally `maskname`. Raises naming the file and line for anything malformed.
    """
    if not os.path.isfile(meta_file):
        raise FileNotFoundError(f"meta file not found: {meta_file} (check dataset.train/test.meta_file)")
    entries = []
    with open(meta_file, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                entries.append((line_number, _parse_meta_line(line, f"{meta_file}:{line_number}")))
    if not entries:
        raise ValueError(f"meta file {meta_file} is empty: it needs one JSON object per line "
                         "(tools/build_meta.py writes it)")
    return entries


def _parse_meta_line(line, where):
    try:
        meta = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: malformed JSON ({err.msg} at column {err.colno}); each line must be one "
                         'JSON object like {"filename": "cls/test/crack/000.png", "label": 1}') from err
    if not isinstance(meta, dict) or not isinstance(meta.get("filename"), str):
        raise ValueError(f"{where}: each line needs a JSON object with a string 'filename'; got {line.strip()[:200]}")
    if meta.get("label") not in (0, 1) or isinstance(meta.get("label"), bool):
        raise ValueError(f"{where}: 'label' must be 0 (good) or 1 (defective); got {meta.get('label')!r}")
    if "maskname" in meta and not isinstance(meta["maskname"], str):
        raise ValueError(f"{where}: 'maskname' must be a string path; got {meta['maskname']!r}")
    if "clsname" not in meta:
        meta["clsname"] = derive_clsname(meta["filename"], where)
    return meta


def derive_clsname(filename, where="meta"):
    """The class name of `cls/split/defect/file.png`: the 4th path component from the end."""
    parts = filename.replace("\\", "/").split("/")
    if len(parts) < 4:
        raise ValueError(f"{where}: no 'clsname' and filename {filename!r} has fewer than 4 path components "
                         "(cls/split/defect/file), so the class cannot be derived; add a 'clsname' key")
    return parts[-4]


class CustomDataset(Dataset):
    """Dataset over a meta file.

    Item dict: `filename` str, `height`/`width` int (original image size), `label` int, `clsname` str,
    `image` float32 [3,H,W] normalised, `mask` float32 [1,H,W] in {0,1}, with [H,W] = the transform's
    input size.
    """

    def __init__(self, image_reader, meta_file, training, transform_fn, normalize_fn, colorjitter_fn=None):
        self.image_reader = image_reader
        self.meta_file = str(meta_file)
        self.training = training
        self.transform_fn = transform_fn
        self.normalize_fn = normalize_fn
        self.colorjitter_fn = colorjitter_fn
        entries = read_meta_file(self.meta_file)
        self.line_numbers = [line_number for line_number, _ in entries]
        self.metas = [meta for _, meta in entries]
        self._check_files_exist()

    def __len__(self):
        return len(self.metas)

    def _where(self, index):
        return f"{self.meta_file}:{self.line_numbers[index]}"

    def _check_files_exist(self):
        """Fail before training, naming the first missing image or mask and its meta line."""
        for index, meta in enumerate(self.metas):
            for key in ("filename", "maskname"):
                if key in meta and not os.path.isfile(self.image_reader.path(meta[key])):
                    raise FileNotFoundError(f"{key} not found: {self.image_reader.path(meta[key])} (listed at "
                                            f"{self._where(index)}; check image_reader.kwargs.image_dir)")

    def _read(self, index, filename, is_mask=False):
        """Read through the reader, adding the meta line to any error."""
        try:
            return self.image_reader(filename, is_mask=is_mask)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (listed at {self._where(index)})") from err
        except ValueError as err:
            raise ValueError(f"{err} (listed at {self._where(index)})") from err

    def _read_mask(self, index, meta, height, width):
        """uint8 HxW mask: the mask file when `maskname`, else all 0 (good) or all 255 (defective)."""
        if "maskname" in meta:
            return self._read(index, meta["maskname"], is_mask=True)
        return np.full((height, width), 255 * meta["label"], dtype=np.uint8)

    def __getitem__(self, index):
        meta = self.metas[index]
        image = self._read(index, meta["filename"])
        height, width = image.shape[:2]
        mask = self._read_mask(index, meta, height, width)
        image = Image.fromarray(image).convert("RGB")  # a GRAY reader gives HxW; the model needs 3 channels
        # a mask of another size than the image is simply resized (nearest) to the input size below
        image, mask = self.transform_fn(image, Image.fromarray(mask, "L"))
        if self.colorjitter_fn is not None and self.training:
            image = self.colorjitter_fn(image)
        mask = (to_tensor(mask) > 0).float()  # == ToTensor for 0/255 masks; also binarises 0/1 or 0/k masks
        return {"filename": meta["filename"], "height": height, "width": width, "label": meta["label"],
                "clsname": meta["clsname"], "image": self.normalize_fn(to_tensor(image)), "mask": mask}
