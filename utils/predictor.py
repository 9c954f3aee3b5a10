"""Inference on images outside a dataset: the ``Predictor`` API behind ``tools/infer.py``.

    from utils.predictor import Predictor
    predictor = Predictor("experiments/MVTec-AD/config.yaml", "experiments/MVTec-AD/checkpoints/ckpt_best.pth.tar")
    results = predictor.predict(["bottle.png", rgb_uint8_array], class_names=["bottle", None])
    results[0]["map"], results[0]["score"], results[0]["threshold"], results[0]["is_anomaly"]

Preprocessing is the test pipeline of ``datasets.data_builder.build_custom_dataset``, built from the
same pieces: the config's OpenCV reader (``color_mode``), PIL RGB, ``datasets.transforms.
TestBaseTransform`` (PIL bilinear resize to ``input_size``), ``to_tensor``, ``Normalize(pixel_mean,
pixel_std)``. The image score is ``utils.metrics.image_scores.image_scores`` with the config's image
method (``utils.thresholds.image_score_spec``); thresholds come from the checkpoint (``thresholds``,
written after each validation) unless a thresholds file or a fixed threshold is given.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import Normalize
from torchvision.transforms.functional import to_tensor

from datasets.image_reader import OpenCVReader, build_image_reader
from datasets.transforms import TestBaseTransform
from models.backbones import backbone_info
from models.model_helper import ModelHelper
from utils.checkpoint import load_checkpoint, load_model_state
from utils.config_helper import load_config
from utils.dist_helper import select_device
from utils.metrics.image_scores import image_scores
from utils.thresholds import check_thresholds, image_score_spec, load_thresholds_json, select_threshold

_LOG = logging.getLogger("uniad.predictor")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# What a bad image file raises while being read and decoded (the reader's own errors, and cv2's).
READ_ERRORS = (FileNotFoundError, ValueError, OSError, cv2.error)


# ------------------------------------------------------------------------------ configuration
def inference_config(config: Union[str, Mapping], opts: Sequence[str] = ()) -> Any:
    """The config for inference: a path (loaded with ``load_config(path, opts)``) or a loaded config
    (copied). The checkpoint holds every weight, so backbones are built with ``pretrained: False``
    (no download), and ``save_recon`` is off (inference writes no reconstructions)."""
    if isinstance(config, (str, os.PathLike)):
        cfg = load_config(str(config), opts)
    elif opts:
        raise ValueError("opts apply to a config file; pass a path, or edit the loaded config instead")
    else:
        cfg = copy.deepcopy(config)
    if (cfg.get("dataset") or {}).get("type", "custom") != "custom":
        raise ValueError(f"inference reads image files: dataset.type must be 'custom' (got "
                         f"{cfg.dataset.type!r}); CIFAR-10 configs are not supported")
    for entry in cfg.net:
        kwargs = entry.setdefault("kwargs", {})
        if "pretrained" in kwargs or str(entry.get("type", "")).rsplit(".", 1)[-1] in backbone_info:
            kwargs["pretrained"] = False  # backbone factories default to True (a download)
        if "save_recon" in kwargs:
            kwargs["save_recon"] = False
    return cfg


def _color_mode(cfg) -> str:
    reader_cfg = cfg.dataset.get("image_reader") or {}
    return (reader_cfg.get("kwargs") or {}).get("color_mode", "RGB")


def to_rgb(image: np.ndarray, color_mode: str) -> np.ndarray:
    """A reader's output (``color_mode`` RGB | BGR | GRAY) as uint8 RGB [H,W,3] for overlays."""
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if color_mode == "BGR" else image


def from_rgb(image: np.ndarray, color_mode: str) -> np.ndarray:
    """A uint8 RGB [H,W,3] array as the reader would return it in ``color_mode``."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"images must be uint8 RGB arrays [H,W,3], got {image.dtype} {image.shape}")
    if color_mode == "BGR":
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if color_mode == "GRAY" else image


class Preprocess:
    """One image as the test dataset prepares it: reader output -> normalised float32 [3,H,W].

    The same steps as ``CustomDataset.__getitem__`` with the test transform of
    ``build_custom_dataset``: ``Image.fromarray(...).convert("RGB")``, ``TestBaseTransform``'s image
    resize, ``to_tensor``, ``Normalize(pixel_mean, pixel_std)``.
    """

    def __init__(self, dataset_cfg: Mapping):
        for key in ("input_size", "pixel_mean", "pixel_std"):
            if key not in dataset_cfg:
                raise KeyError(f"dataset.{key} is missing from the config; inference needs it to prepare images")
        self.transform = TestBaseTransform(dataset_cfg["input_size"])
        self.normalize = Normalize(dataset_cfg["pixel_mean"], dataset_cfg["pixel_std"])

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        pil = Image.fromarray(image).convert("RGB")  # a GRAY reader gives HxW; the model needs 3 channels
        return self.normalize(to_tensor(self.transform.resize_image(pil)))


# ---------------------------------------------------------------------------------- the API
class Predictor:
    """A trained model with its preprocessing, image score and thresholds.

    Args:
        config: config path or a config loaded by ``load_config``.
        checkpoint: checkpoint path (``state_dict`` applied strictly; ``thresholds`` read if present).
        device: ``cpu`` | ``cuda`` | ``auto``/None (the config's ``device``, else CUDA when available).
        opts: ``KEY=VALUE`` overrides when ``config`` is a path (e.g. ``net.reconstruction.kwargs.attn_impl=torch``).
        thresholds: a thresholds dict or ``thresholds.json`` path overriding the checkpoint's.
    """

    def __init__(self, config: Union[str, Mapping], checkpoint: str, device: Optional[str] = None,
                 opts: Sequence[str] = (), thresholds: Union[None, str, Mapping] = None):
        self.cfg = inference_config(config, opts)
        self.device = select_device(device if device is not None else self.cfg.get("device"), 0)
        self.model = ModelHelper(self.cfg.net)
        ckpt = load_checkpoint(str(checkpoint))
        load_model_state(self.model, ckpt["state_dict"] if "state_dict" in ckpt else ckpt, strict=True,
                         source=str(checkpoint))
        self.model.to(self.device).eval()
        self.score_name, self.score_kwargs = image_score_spec(self.cfg.get("evaluator"))
        self.thresholds = self._thresholds(thresholds, ckpt, str(checkpoint))
        self.color_mode = _color_mode(self.cfg)
        self.preprocess = Preprocess(self.cfg.dataset)
        reader_cfg = self.cfg.dataset.get("image_reader")
        self.reader = build_image_reader(reader_cfg) if reader_cfg else OpenCVReader("", "RGB")

    def _thresholds(self, given, ckpt: Mapping, source: str) -> Optional[dict]:
        if isinstance(given, (str, os.PathLike)):
            given, source = load_thresholds_json(str(given)), str(given)
        thresholds = given if given is not None else ckpt.get("thresholds")
        if thresholds is None:
            return None
        check_thresholds(thresholds, source)
        spec = thresholds["image_score"]
        if (spec["name"], dict(spec.get("kwargs") or {})) != (self.score_name, self.score_kwargs):
            raise ValueError(f"the thresholds of {source} were chosen for the image score {spec} but this config "
                             f"scores images with {{'name': {self.score_name!r}, 'kwargs': {self.score_kwargs}}}; "
                             "use the config the model was validated with, or pass a fixed --threshold")
        return dict(thresholds)

    @property
    def image_dir(self) -> str:
        """Where meta-file ``filename``s are relative to (the config's image_reader image_dir)."""
        return getattr(self.reader, "image_dir", "")

    def read(self, source: str) -> tuple[torch.Tensor, np.ndarray]:
        """(normalised [3,H,W] tensor, original uint8 RGB [h,w,3]) of an image file (absolute, or
        relative to ``image_dir``). Raises FileNotFoundError / ValueError for unreadable files."""
        image = self.reader(source)
        return self.preprocess(image), to_rgb(image, self.color_mode)

    def prepare(self, image: Union[str, os.PathLike, np.ndarray]) -> tuple[torch.Tensor, np.ndarray]:
        """A path (relative to the working directory, read as the dataset reads) or a uint8 RGB
        array -> (tensor, original RGB)."""
        if isinstance(image, (str, os.PathLike)):
            return self.read(os.path.abspath(os.fspath(image)))
        as_read = from_rgb(image, self.color_mode)
        return self.preprocess(as_read), np.asarray(image)

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Normalised images [B,3,H,W] -> (maps float32 [B,H,W], image scores float64 [B])."""
        pred = self.model({"image": batch.to(self.device)})["pred"]
        maps = pred[:, 0].float().cpu().numpy()
        return maps, image_scores(self.score_name, maps, self.score_kwargs)

    def decide(self, score: float, class_name: Optional[str] = None, threshold: Optional[float] = None) -> dict:
        """``threshold`` (given, else the class's, else the global one), its source and the decision."""
        if threshold is not None:
            value, source = float(threshold), "fixed"
        else:
            value, source = select_threshold(self.thresholds, class_name, "image")
        pixel, _ = select_threshold(self.thresholds, class_name, "pixel")
        return {"threshold": value, "threshold_source": source, "pixel_threshold": pixel,
                "is_anomaly": None if value is None else bool(score >= value)}

    def predict(self, images: Sequence, class_names: Optional[Sequence[Optional[str]]] = None,
                threshold: Optional[float] = None, batch_size: int = 8) -> list[dict]:
        """Anomaly maps, scores and decisions of ``images`` (paths or uint8 RGB [H,W,3] arrays).

        Returns one dict per image: ``map`` float32 [H,W] (network resolution), ``score`` float,
        ``threshold`` float or None, ``is_anomaly`` bool or None (no threshold), ``class_name``,
        ``threshold_source`` (fixed | class:<name> | global | none), ``pixel_threshold``.
        """
        images = list(images)
        names = list(class_names) if class_names is not None else [None] * len(images)
        if len(names) != len(images):
            raise ValueError(f"predict: {len(images)} images but {len(names)} class names")
        results = []
        for start in range(0, len(images), max(int(batch_size), 1)):
            chunk = images[start:start + batch_size]
            maps, scores = self.forward(torch.stack([self.prepare(image)[0] for image in chunk]))
            for i, (score_map, score) in enumerate(zip(maps, scores)):
                name = names[start + i]
                results.append({"map": score_map, "score": float(score), "class_name": name,
                                **self.decide(float(score), name, threshold)})
        return results

    def overlay_range(self) -> Optional[tuple[float, float]]:
        """(min, max) for globally normalised overlays: the config's vis_compound min/max_score when
        set (as the original), else the validation maps' range stored with the thresholds, else None."""
        vis = (self.cfg.get("evaluator") or {}).get("vis_compound") or {}
        stored = ((self.thresholds or {}).get("global") or {}).get("score_range") or {}
        low = vis.get("min_score") or stored.get("min")  # null or 0 = not set, as in the original
        high = vis.get("max_score") or stored.get("max")
        return None if low is None or high is None else (float(low), float(high))


# ------------------------------------------------------------------------------------ inputs
@dataclass
class InputItem:
    """One image to score: ``source`` for the reader, ``name`` for the results, a unique ``stem``."""
    source: str
    name: str
    stem: str
    class_name: Optional[str] = None


def _stem_of(relative: str) -> str:
    """``sub/dir/000.png`` -> ``sub__dir__000``: file names that stay distinct across folders."""
    without_ext = os.path.splitext(relative.replace("\\", "/"))[0]
    return "__".join(part for part in without_ext.split("/") if part not in ("", ".", ".."))


def _unique_stems(items: list[InputItem]) -> list[InputItem]:
    """Suffix ``_2``, ``_3`` ... where two inputs would still share a stem (e.g. a.png and a.jpg)."""
    seen: dict[str, int] = {}
    for item in items:
        count = seen.get(item.stem, 0) + 1
        seen[item.stem] = count
        if count > 1:
            item.stem = f"{item.stem}_{count}"
            seen[item.stem] = 1
    return items


def _folder_items(folder: str, class_name: Optional[str]) -> list[InputItem]:
    items = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for file in sorted(files):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                relative = os.path.relpath(os.path.join(root, file), folder)
                items.append(InputItem(os.path.abspath(os.path.join(root, file)), relative.replace(os.sep, "/"),
                                       _stem_of(relative), class_name))
    if not items:
        raise ValueError(f"no images found in folder {folder} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})")
    return items


def _meta_records(path: str) -> list[dict]:
    """A JSON-lines meta file (or one JSON list) -> records with a ``filename``."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON lines nor a JSON list ({exc}); each record needs a 'filename'") from exc
    bad = [i for i, r in enumerate(records, 1) if not isinstance(r, dict) or not isinstance(r.get("filename"), str)]
    if bad:
        raise ValueError(f"{path}: record {bad[0]} has no string 'filename' "
                         '(e.g. {"filename": "cls/test/x.png"})')
    return records


def _meta_items(path: str, class_name: Optional[str]) -> list[InputItem]:
    records = _meta_records(path)
    if not records:
        raise ValueError(f"meta file {path} lists no images")
    return [InputItem(r["filename"], r["filename"], _stem_of(r["filename"]), r.get("clsname") or class_name)
            for r in records]


def collect_inputs(path: str, class_name: Optional[str] = None) -> list[InputItem]:
    """The images named by ``path``: one image file, a folder (recursive, sorted), or a meta file
    (``.json`` / ``.jsonl``: JSON lines with ``filename`` relative to the config's image_dir and an
    optional ``clsname``, which wins over ``class_name``). Stems are unique."""
    if os.path.isdir(path):
        items = _folder_items(path, class_name)
    elif os.path.isfile(path) and path.lower().endswith((".json", ".jsonl")):
        items = _meta_items(path, class_name)
    elif os.path.isfile(path):
        items = [InputItem(os.path.abspath(path), os.path.basename(path),
                           _stem_of(os.path.basename(path)), class_name)]
    else:
        raise FileNotFoundError(f"--input {path} is neither an image file, a folder nor a meta file (.json/.jsonl)")
    return _unique_stems(items)


class InferenceDataset(Dataset):
    """Reads and prepares the inputs (in DataLoader workers when asked). Item dict: ``index`` int,
    ``image`` float32 [3,H,W] or None, ``original`` uint8 RGB [h,w,3] or None, ``error`` str or None
    (an unreadable file does not stop the others)."""

    def __init__(self, items: Sequence[InputItem], predictor: Predictor):
        self.items = list(items)
        self.reader, self.preprocess, self.color_mode = predictor.reader, predictor.preprocess, predictor.color_mode

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        try:
            image = self.reader(self.items[index].source)
        except READ_ERRORS as exc:
            return {"index": index, "image": None, "original": None, "error": f"{type(exc).__name__}: {exc}"}
        return {"index": index, "image": self.preprocess(image), "original": to_rgb(image, self.color_mode),
                "error": None}


def keep_list(batch: list) -> list:
    """DataLoader collate that keeps the item dicts as they are (images differ in size)."""
    return batch
