"""ONNX export: normalised images [B,3,H,W] -> (anomaly map [B,1,H,W], image score [B]).

The graph holds the whole model (backbone, neck, reconstruction) in eval mode (no feature jitter,
no dropout) and the config's image score (``utils.thresholds.image_score_spec``) computed the way
``utils.metrics.image_scores`` defines it: ``max`` = ``avg_pool2d(map, avgpool_size, stride 1)``
then the max; ``mean`` / ``std`` (population) over the map. The batch axis is dynamic.

Inputs are prepared exactly as ``utils.predictor.Preprocess`` does (OpenCV read, RGB, PIL bilinear
resize to ``input_size``, ``to_tensor``, ``Normalize(pixel_mean, pixel_std)``); the model file's
metadata records input_size, pixel_mean, pixel_std, the image score and the thresholds (JSON).

Exporters: ``torchscript`` (default; ``torch.onnx.export(dynamo=False)``, a few seconds) or
``dynamo`` (``torch.export``-based, several times slower to export). Both export the fast attention
path; ``--opts net.reconstruction.kwargs.attn_impl=torch`` selects the original
``nn.MultiheadAttention`` path with the same state_dict. Every export is checked in onnxruntime
against PyTorch (batch 1 and 3) before it is reported done.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.metrics.image_scores import pool_size

INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "image_score")
EXPORTERS = ("torchscript", "dynamo")


def torch_image_score(pred: torch.Tensor, name: str, kwargs: Mapping) -> torch.Tensor:
    """[B,1,H,W] maps -> [B] image scores, as ``utils.metrics.image_scores`` defines them."""
    if name == "max":
        return F.avg_pool2d(pred, pool_size(dict(kwargs)), stride=1).amax(dim=(1, 2, 3))
    if name == "mean":
        return pred.mean(dim=(1, 2, 3))
    if name == "std":
        return pred.std(dim=(1, 2, 3), unbiased=False)
    raise ValueError(f"unknown image-level method {name!r}: expected mean, std or max")


class AnomalyScorer(nn.Module):
    """``forward(image [B,3,H,W] normalised) -> (pred [B,1,H,W], score [B])`` around a ModelHelper."""

    def __init__(self, model: nn.Module, score_name: str, score_kwargs: Mapping):
        super().__init__()
        self.model, self.score_name, self.score_kwargs = model, score_name, dict(score_kwargs)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.model({"image": image})["pred"]
        return pred, torch_image_score(pred, self.score_name, self.score_kwargs)


@dataclass
class ParityReport:
    """Largest |onnxruntime - PyTorch| per batch size, for the maps and the scores."""
    map_diff: dict
    score_diff: dict
    map_scale: float

    def worst(self) -> tuple[float, float]:
        return max(self.map_diff.values()), max(self.score_diff.values())


def _export(scorer: AnomalyScorer, example: torch.Tensor, path: str, exporter: str, opset: int) -> None:
    names = dict(input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES))
    if exporter == "dynamo":
        torch.onnx.export(scorer, (example,), path, dynamo=True, opset_version=opset, optimize=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False, **names)
    elif exporter == "torchscript":
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}}
        with warnings.catch_warnings():
            # UniAD's input shape check becomes a constant of the trace: right, since only the batch varies.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(scorer, (example,), path, dynamo=False, opset_version=opset, dynamic_axes=axes, **names)
    else:
        raise ValueError(f"exporter {exporter!r} is not one of {EXPORTERS}")


def _add_metadata(path: str, metadata: Mapping[str, object]) -> None:
    import onnx

    model = onnx.load(path)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, path)


def check_parity(scorer: AnomalyScorer, path: str, input_size: Sequence[int], batch_sizes=(1, 3),
                 seed: int = 0) -> ParityReport:
    """Run the ONNX file in onnxruntime (CPU) and ``scorer`` on the same random normalised batches."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    device = next(scorer.parameters()).device
    map_diff, score_diff, scale = {}, {}, 0.0
    for batch in batch_sizes:
        image = torch.randn(batch, 3, *input_size, generator=generator)
        with torch.no_grad():
            pred, score = (t.float().cpu().numpy() for t in scorer(image.to(device)))
        onnx_pred, onnx_score = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()})
        if onnx_pred.shape != pred.shape or onnx_score.shape != score.shape:
            raise RuntimeError(f"{path}: onnxruntime returned shapes {onnx_pred.shape}, {onnx_score.shape} for "
                               f"batch {batch}; PyTorch {pred.shape}, {score.shape}")
        map_diff[batch] = float(np.abs(onnx_pred - pred).max())
        score_diff[batch] = float(np.abs(onnx_score - score).max())
        scale = max(scale, float(np.abs(pred).max()))
    return ParityReport(map_diff, score_diff, scale)


def export_onnx(config: Union[str, Mapping], checkpoint: str, output: str, opts: Sequence[str] = (),
                exporter: str = "torchscript", opset: int = 18, tolerance: float = 1e-4) -> ParityReport:
    """Export ``checkpoint`` (weights applied strictly to the config's model) to ``output``.

    Raises RuntimeError when onnxruntime and PyTorch differ by more than ``tolerance`` x
    max(1, largest map value) on the maps or the scores.
    """
    from utils.predictor import Predictor  # the same model, weights, score and thresholds as inference

    predictor = Predictor(config, checkpoint, device="cpu", opts=opts)
    scorer = AnomalyScorer(predictor.model, predictor.score_name, predictor.score_kwargs).eval()
    input_size = [int(v) for v in predictor.cfg.dataset.input_size]
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    _export(scorer, torch.zeros(2, 3, *input_size), output, exporter, opset)
    _add_metadata(output, _metadata(predictor, input_size))
    report = check_parity(scorer, output, input_size)
    limit = tolerance * max(1.0, report.map_scale)
    if max(report.worst()) > limit:
        raise RuntimeError(f"{output}: onnxruntime differs from PyTorch by {report.worst()} (maps, scores), "
                           f"more than {limit:.3g}; try the other --exporter ({EXPORTERS}) "
                           "or --opts net.reconstruction.kwargs.attn_impl=torch")
    return report


def _metadata(predictor, input_size: list) -> dict:
    dataset = predictor.cfg.dataset
    return {"input_size": input_size, "pixel_mean": list(dataset.pixel_mean), "pixel_std": list(dataset.pixel_std),
            "image_score": {"name": predictor.score_name, "kwargs": predictor.score_kwargs},
            "thresholds": predictor.thresholds, "outputs": list(OUTPUT_NAMES)}


def read_metadata(path: str) -> dict:
    """The metadata :func:`export_onnx` stored (values decoded from JSON)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return {entry.key: json.loads(entry.value) for entry in model.metadata_props}


def onnx_predict(path: str, images: np.ndarray, session: Optional[object] = None) -> tuple[np.ndarray, np.ndarray]:
    """(maps [B,1,H,W], scores [B]) of normalised float32 images [B,3,H,W] in onnxruntime (CPU)."""
    import onnxruntime

    session = session or onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    pred, score = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})
    return pred, score
