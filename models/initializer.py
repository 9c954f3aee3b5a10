"""Weight initialisation from a config entry, with the original UniAD `initialize_from_cfg` behaviour.

`initialize_from_cfg(module, cfg)` walks `module.modules()` in registration order and re-initialises
every `nn.Linear` / `nn.Conv2d` / `nn.ConvTranspose2d` weight (bias set to zero) and every
`nn.BatchNorm2d` (weight 1, bias 0). Everything else keeps its own default initialisation: in
particular `nn.MultiheadAttention.in_proj_weight` (a bare Parameter, not a Linear) and embeddings.
Because the walk draws from the global torch RNG in module order, the same seed and the same module
tree give the same weights as the original.

cfg: None / False (-> method "normal", std 0.01, as the original's default), or a mapping with
`method` in {normal, xavier_uniform, xavier_normal, msra_uniform, msra_normal}; `normal` also takes
`std` (default 0.01).
"""
from functools import partial

import torch.nn as nn

_WEIGHT_INITS = {
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    # msra = Kaiming (He) with a=1 (leaky-relu slope 1, i.e. gain 1), fan_in, as the original.
    "msra_uniform": partial(nn.init.kaiming_uniform_, a=1),
    "msra_normal": partial(nn.init.kaiming_normal_, a=1),
}
METHODS = ("normal",) + tuple(_WEIGHT_INITS)
_WEIGHTED_TYPES = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)


def initialize_from_cfg(module, cfg):
    """Initialise `module` in place from an `initializer` config entry (see the module docstring)."""
    if not cfg:
        initialize(module, "normal", std=0.01)
        return
    if not hasattr(cfg, "keys") or "method" not in cfg:
        raise ValueError(
            f"initializer config {cfg!r} needs a 'method' key, one of {list(METHODS)} "
            "(e.g. initializer: {method: xavier_uniform})"
        )
    kwargs = {key: value for key, value in cfg.items() if key != "method"}
    initialize(module, cfg["method"], **kwargs)


def initialize(module, method, std=None):
    """Re-initialise BatchNorm2d, then Linear/Conv2d/ConvTranspose2d weights with `method`, biases to 0."""
    if method not in METHODS:
        raise ValueError(f"initializer method {method!r} is not supported; use one of {list(METHODS)}")
    if std is not None and method != "normal":
        raise ValueError(f"initializer key 'std' only applies to method 'normal', not {method!r}; remove it")
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
    init_weight = partial(nn.init.normal_, std=0.01 if std is None else std)
    if method != "normal":
        init_weight = _WEIGHT_INITS[method]
    for m in module.modules():
        if isinstance(m, _WEIGHTED_TYPES):
            init_weight(m.weight.data)
            if m.bias is not None:
                m.bias.data.zero_()
