"""Backbone factories (``type: models.backbones.<name>``) and ``backbone_info``.

Every factory returns an ``nn.Module`` with ``forward({"image": [B,3,H,W]}) -> {"features", "strides"}``,
``get_outplanes()`` and ``get_outstrides()``; see ``efficientnet_b4`` for the arguments.
"""
from models.backbones.backbone_info import backbone_info, derive_backbone_kwargs, resolve_outlayers
from models.backbones.efficientnet import (efficientnet_b0, efficientnet_b1, efficientnet_b2, efficientnet_b3,
                                           efficientnet_b4, efficientnet_b5, efficientnet_b6, efficientnet_lite0,
                                           efficientnet_lite1, efficientnet_lite2)
from models.backbones.resnet import resnet18, resnet34, resnet50, resnet101, wide_resnet50_2

__all__ = [
    "backbone_info", "derive_backbone_kwargs", "resolve_outlayers",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    "resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2",
]
