"""Config fuzzing: junk in any config key gives a clear error naming the key, or a working config.

For each key (every checked leaf of ``utils.config_schema.SCHEMA``, every mapping node, and the
kwargs of the demo config's modules), hypothesis writes junk values (strings, negatives, nan/inf,
empty lists, wrong nesting, ...) into a tiny config's YAML. The config is then loaded and passed
through the builders that consume that key, as the training tool would. The outcome must be one
of two things:

* no error (the value is usable), or
* an error the tools report as a user error (``utils.cli.exit_code_for(exc) == 2``: a
  ``ConfigError`` or a deliberate ``raise`` of a check in this repository, so no traceback wall)
  whose message names the key.

A raw exception from deep inside torch / numpy / cv2 fails the test with the key and the value.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_train_val import make_config
from utils.cli import exit_code_for, user_message
from utils.config_helper import load_config
from utils.config_schema import ANY, SCHEMA, ListOf, missing_required

LOGGER = logging.getLogger("uniad.fuzz")
BASE_SIZE = [64, 64]

# ------------------------------------------------------------------------------------ the keys
# kwargs of the modules the demo config builds (value-checked by name in the schema, names by the builders)
KWARG_KEYS = [
    "dataset.image_reader.kwargs.image_dir", "dataset.image_reader.kwargs.color_mode",
    "net.backbone.kwargs.pretrained", "net.backbone.kwargs.outlayers",
    "net.neck.kwargs.outstrides",
    *(f"net.reconstruction.kwargs.{k}" for k in (
        "pos_embed_type", "hidden_dim", "nhead", "num_encoder_layers", "num_decoder_layers", "dim_feedforward",
        "dropout", "activation", "normalize_before", "feature_jitter", "neighbor_mask", "save_recon",
        "initializer")),
    "criterion.FeatureMSELoss.kwargs.weight",
    "trainer.optimizer.kwargs.lr", "trainer.optimizer.kwargs.betas", "trainer.optimizer.kwargs.weight_decay",
    "trainer.lr_scheduler.kwargs.T_max", "trainer.lr_scheduler.kwargs.eta_min",
]
# set by load_config itself, or consumed by no builder (documented as free-form)
SKIP = {"config_file", "exp_path", "version", "dataset.normals", "dataset.train.root_dir", "dataset.test.root_dir"}


def schema_keys(schema=SCHEMA, prefix: str = "") -> list[str]:
    """Every key of the schema tree: checked leaves and mapping nodes; list entries by their name."""
    keys = []
    for key, sub in schema.items():
        path = f"{prefix}{key}"
        if path in SKIP:
            continue
        keys.append(path)
        if isinstance(sub, dict):
            keys += schema_keys(sub, path + ".")
        elif isinstance(sub, ListOf) and path in ("net", "criterion"):
            names = ("backbone", "neck", "reconstruction") if path == "net" else ("FeatureMSELoss",)
            for name in names:
                keys += [f"{path}.{name}.{k}" for k in sub.entry if k != "name"]
    return keys


KEYS = sorted(set(schema_keys()) | set(KWARG_KEYS))

# ------------------------------------------------------------------------------------- the junk
_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=6)


def junk(max_int: int) -> st.SearchStrategy:
    """Scalars (None, bools, ints, floats with nan/inf, short text) nested in lists and mappings."""
    scalar = (st.none() | st.booleans() | st.integers(-64, max_int) | _TEXT
              | st.floats(allow_nan=True, allow_infinity=True, width=32))
    return st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=2),
                        max_leaves=4)


FIXED = ["", "abc", -1, 0, 0.5, [], {}, None, float("inf"), float("nan"), [1, 2, 3], {"a": 1}, True]
# Model sizes are not fuzzed with huge integers: 10**12 layers is a slow build, not a config check.
VALUES = st.sampled_from(FIXED + [10 ** 12]) | junk(10 ** 6)
MODEL_VALUES = st.sampled_from(FIXED) | junk(64)


# ----------------------------------------------------------------------------------- the config
@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_dataset) -> dict:
    folder = tmp_path_factory.mktemp("fuzz_base")
    return yaml.safe_load(make_config(folder, tiny_dataset).read_text())


def set_key(cfg: dict, key: str, value) -> None:
    """Set a dotted key, addressing net / criterion entries by name, creating mappings on the way."""
    node, parts = cfg, key.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            node = next(e for e in node if e.get("name") == part)
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


# ------------------------------------------------------------------------------------- builders
@pytest.fixture(scope="module")
def base_model(base, tmp_path_factory):
    from models.model_helper import ModelHelper
    path = tmp_path_factory.mktemp("fuzz_model") / "config.yaml"
    path.write_text(yaml.safe_dump(base))
    return ModelHelper(load_config(str(path)).net)


def build_model(cfg, forward: bool):
    """As the training tool: the model, then the optimizer over its trainable children; a forward."""
    from models.model_helper import ModelHelper
    from utils.optimizer_helper import build_optimizer
    model = ModelHelper(cfg.net)
    build_optimizer(cfg.trainer.optimizer, model, model.trainable_names)
    if forward and list(cfg.dataset.input_size) == BASE_SIZE:
        with torch.no_grad():
            out = model({"image": torch.zeros(1, 3, *BASE_SIZE)})
        assert out["pred"].shape[-2:] == tuple(BASE_SIZE)
    return model


def build_data(cfg):
    from datasets.data_builder import build_dataloader
    train_loader, test_loader = build_dataloader(cfg.dataset, False, seed=cfg.random_seed)
    for loader in (train_loader, test_loader):
        if loader is not None:
            item = loader.dataset[0]
            assert torch.isfinite(item["image"]).all(), "non-finite image after normalisation"


def build_training(cfg, model):
    from utils.lr_helper import build_scheduler
    from utils.optimizer_helper import build_optimizer
    from utils.engine import EpochPlan
    from utils.misc_helper import BestTracker
    trainer = cfg.trainer
    optimizer = build_optimizer(trainer.optimizer, model, model.trainable_names)
    scheduler = build_scheduler(trainer.lr_scheduler, optimizer, trainer.get("warmup_epochs", 0))
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    EpochPlan(0, trainer.max_epoch, trainer.print_freq_step, trainer.get("tb_freq_step", 1),
              trainer.get("clip_max_norm"), trainer.get("accumulate_steps", 1))
    BestTracker(trainer.get("early_stop_patience") or 0)
    return optimizer, scheduler


def build_cache(cfg, model):
    from datasets.data_builder import build_dataloader
    from datasets.feature_cache import cached_loaders
    from utils.dist_helper import DistInfo
    train_loader, test_loader = build_dataloader(cfg.dataset, False, seed=cfg.random_seed)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False)
    cached_loaders(cfg, model, train_loader, test_loader, info, LOGGER)


def build_criterion_and_call(cfg):
    from utils.criterion_helper import build_criterion
    criterion = build_criterion(cfg.criterion)
    zeros = torch.zeros(1, 4, 2, 2)
    losses = criterion({"feature_rec": zeros, "feature_align": zeros + 1})
    assert all(torch.isfinite(v) or torch.isnan(v) for v in losses.values())


def build_evaluator(cfg, tmp: Path):
    from utils.eval_helper import performances
    from utils.misc_helper import BestTracker
    from utils.run_state import record_validation
    rng = np.random.default_rng(0)
    infos = [{"clsname": c, "filename": f"{c}/test/{d}/{i}.png"} for c in ("a", "b") for i, d in
             enumerate(("good", "bad", "good", "bad"))]
    preds = rng.random((8, 32, 32)).astype(np.float32)
    masks = np.zeros((8, 32, 32), np.uint8)
    masks[1::2, 8:16, 8:16] = 1
    metrics = performances(infos, preds, masks, cfg.evaluator.metrics)
    record_validation(BestTracker(0), cfg.evaluator.key_metric, metrics, 1)
    from utils.vis_helper import visualize_compound, visualize_single
    for key, fn in (("vis_compound", visualize_compound), ("vis_single", visualize_single)):
        vis = cfg.evaluator.get(key)
        if vis:
            fn(infos[:2], preds[:2], masks[:2], vis, lambda _: np.zeros((32, 32, 3), np.uint8), str(tmp))


def build_saver(cfg, model, tmp: Path):
    import os
    from utils.misc_helper import BestTracker, create_logger
    from utils.run_state import resume_if_any
    create_logger("uniad.fuzz", os.path.join(cfg.saver.log_dir, "train.log"))
    optimizer, scheduler = build_training(cfg, model)
    resume_if_any(cfg, model, optimizer, scheduler, BestTracker(0), LOGGER)


def build_top(cfg):
    from utils.dist_helper import select_device
    from utils.misc_helper import capture_rng_state, restore_rng_state, set_random_seed
    state = capture_rng_state()
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        set_random_seed(cfg.random_seed, cfg.get("reproduce", False))
        # what torch.cuda.manual_seed(seed ** 3) will do on a GPU machine (lazy, so not run on CPU)
        torch.Generator().manual_seed(cfg.random_seed ** 3)
    finally:
        restore_rng_state(state)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
    select_device(cfg.get("device"), 0)
    if cfg.get("port") is not None:
        assert 0 <= cfg.port <= 65535


def consume(key: str, cfg, base_model, tmp: Path) -> None:
    """Run the builders that read ``key``, as tools/train_val.py does."""
    section = key.split(".")[0]
    if section in ("net", "frozen_layers") or key == "dataset.input_size":
        build_model(cfg, forward=section == "net")
    if section == "dataset":
        build_data(cfg)
    if section == "criterion":
        build_criterion_and_call(cfg)
    if section == "trainer":
        build_training(cfg, base_model)
        if key.startswith("trainer.feature_cache"):
            build_cache(cfg, base_model)
    if section == "evaluator":
        build_evaluator(cfg, tmp)
    if section == "saver":
        build_saver(cfg, base_model, tmp)
    if section in ("random_seed", "reproduce", "device", "port"):
        build_top(cfg)


def names_key(message: str, key: str, value) -> bool:
    """The message names the key: its dotted path, its last part, its parent (``trainer.optimizer``
    for a junk ``kwargs`` mapping), the list entry (``FeatureMSELoss``) or, for a path, the value."""
    parts = key.split(".")
    names = {key, parts[-1], ".".join(parts[:-1]) if len(parts) > 2 else key}
    if parts[0] in ("net", "criterion") and len(parts) > 1:
        names.add(parts[1])
    return any(n in message for n in names) or (isinstance(value, str) and len(value) > 2 and value in message)


# ----------------------------------------------------------------------------------------- tests
def _model_key(key: str) -> bool:
    return key.startswith("net") or key in ("dataset.input_size", "frozen_layers")


def problem_with(key: str, value, base_model, folder: Path) -> Optional[str]:
    """Load the served config (``value`` at ``key``), run its builders; what is wrong with the outcome."""
    path = folder / "config.yaml"
    path.write_text("# the test serves the config dict through a patched read_yaml\n")
    try:
        consume(key, load_config(str(path)), base_model, folder)
    except Exception as exc:  # noqa: BLE001 - the point: what did junk raise?
        where = f"{key}={value!r} raised {type(exc).__name__}: {str(exc)[:300]}"
        if exit_code_for(exc) != 2:
            return f"raw traceback for {where}"
        if not names_key(user_message(exc), key, value):
            return f"the message does not name the key: {where}"
    return None


@pytest.mark.parametrize("key", KEYS)
def test_junk_in_any_key_is_a_clear_error_or_a_working_config(key, base, base_model, tmp_path, monkeypatch):
    problems = []

    def serve_and_check(value):
        cfg = copy.deepcopy(base)
        set_key(cfg, key, value)
        monkeypatch.setattr("utils.config_helper.read_yaml", lambda path: copy.deepcopy(cfg))
        problems.append(problem_with(key, value, base_model, tmp_path))

    for value in FIXED if _model_key(key) else FIXED + [10 ** 12]:
        serve_and_check(value)

    @settings(max_examples=2 if _model_key(key) else 5, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(value=MODEL_VALUES if _model_key(key) else VALUES)
    def random_junk(value):
        serve_and_check(value)

    random_junk()
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(value=st.sampled_from(FIXED + [10 ** 12]) | junk(10 ** 6))
def test_junk_round_trips_through_yaml(value):
    """What the fuzz serves in memory is what a YAML file holding it would give (nan compares by repr)."""
    back = yaml.safe_load(yaml.safe_dump({"k": value}))["k"]
    assert repr(back) == repr(value)


def test_every_schema_leaf_is_fuzzed():
    """A new schema key is fuzzed automatically; only SKIP (documented) escapes."""
    leaves = [k for k in schema_keys() if not isinstance(_lookup(k), (dict, ListOf))]
    assert set(leaves) <= set(KEYS) and len(KEYS) > 60


def _lookup(key: str):
    node = SCHEMA
    for part in key.split("."):
        if isinstance(node, ListOf):
            node = node.entry if part in ("backbone", "neck", "reconstruction", "FeatureMSELoss") else node
            continue
        node = node.get(part, ANY) if isinstance(node, dict) else ANY
    return node


def test_missing_required_names_what_the_pending_cases_lack(base):
    """A section present without its required keys is caught, naming the key."""
    cases = {"dataset.image_reader": ({}, "dataset.image_reader.kwargs"), "trainer": ({}, "trainer.optimizer"),
             "saver": ({}, "saver.log_dir"), "evaluator": ({}, "evaluator.metrics"),
             "evaluator.vis_single.max_score": (1.0, "evaluator.vis_single.save_dir")}
    assert missing_required(base) == []
    for key, (value, expected) in cases.items():
        cfg = copy.deepcopy(base)
        set_key(cfg, key, value)
        assert expected in missing_required(cfg), key


def test_valid_base_config_builds_everything(base, base_model, tmp_path):
    """The control: the untouched tiny config passes every builder (so failures above are the junk's)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base))
    cfg = load_config(str(path))
    for key in ("net.neck", "dataset.batch_size", "criterion", "trainer.feature_cache.dtype", "evaluator.metrics",
                "saver.save_dir", "random_seed"):
        consume(key, cfg, base_model, tmp_path)
    assert math.isfinite(cfg.trainer.optimizer.kwargs.lr)
