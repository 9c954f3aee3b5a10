"""ModelHelper: the network built from the config's ``net`` list (backbone -> neck -> reconstruction)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

from utils.registry import instantiate


class ModelHelper(nn.Module):
    """Children named by each entry's ``name``, built in list order and wired by ``prev``.

    For an entry with ``prev``, ``inplanes`` / ``instrides`` are injected from the previous module's
    ``get_outplanes()`` / ``get_outstrides()``, as in the original. Children marked ``frozen`` stay in
    eval mode with ``requires_grad=False`` whatever ``train()`` is called with.

    ``forward(input)`` reads the batch dict (``image`` [B,3,H,W], plus ``feature_align`` when starting
    at the reconstruction) and returns a shallow copy with every child's outputs added:
    ``features``, ``strides`` (backbone), ``feature_align``, ``outplane`` (neck), ``feature_rec``,
    ``pred`` (reconstruction). Tensors are moved to the model's device first, so callers need not
    move the batch themselves.
    """

    def __init__(self, net_cfg: Iterable[Mapping[str, Any]]):
        super().__init__()
        self.frozen_layers: list[str] = []
        self.order: list[str] = []
        for entry in net_cfg:
            self._add_child(entry)

    def _add_child(self, entry: Mapping[str, Any]) -> None:
        name = entry["name"]
        kwargs = dict(entry.get("kwargs") or {})
        prev = entry.get("prev")
        if prev:
            if prev not in self.order:
                raise ValueError(f"net entry '{name}': prev '{prev}' must name an earlier entry ({self.order})")
            kwargs["inplanes"] = getattr(self, prev).get_outplanes()
            kwargs["instrides"] = getattr(self, prev).get_outstrides()
        module = instantiate(entry["type"], kwargs, where=f"net.{name}")
        self.add_module(name, module)
        self.order.append(name)
        if entry.get("frozen", False):
            self.frozen_layers.append(name)
            self._freeze(module)

    @staticmethod
    def _freeze(module: nn.Module) -> None:
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)

    @property
    def trainable_names(self) -> list[str]:
        """Names of the children that are not frozen, in config order."""
        return [n for n in self.order if n not in self.frozen_layers]

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def train(self, mode: bool = True) -> "ModelHelper":
        self.training = mode
        for name in self.order:
            child = getattr(self, name)
            if name in self.frozen_layers:
                self._freeze(child)
            else:
                child.train(mode)
        return self

    def forward(self, input: dict, start: str | None = None, end: str | None = None) -> dict:
        """Run the children in order and return the batch dict with their outputs added.

        ``start``: first child to run (e.g. ``"reconstruction"`` to feed cached ``feature_align``);
        ``end``: first child *not* to run (e.g. ``"reconstruction"`` to compute features only).
        """
        device = self.device
        out = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in input.items()}
        for name in self._span(start, end):
            out.update(getattr(self, name)(out))
        return out

    def _span(self, start: str | None, end: str | None) -> list[str]:
        for name in (start, end):
            if name is not None and name not in self.order:
                raise ValueError(f"'{name}' is not a child of the model ({self.order})")
        lo = 0 if start is None else self.order.index(start)
        hi = len(self.order) if end is None else self.order.index(end)
        return self.order[lo:hi]
