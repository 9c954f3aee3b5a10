"""Learning-rate range test on the config's model, optimizer, criterion and training data.

    python tools/lr_find.py --config experiments/demo/config.yaml [--opts KEY=VALUE ...] \
        [--start-lr 1e-7] [--end-lr 1] [--num-iter 100]

Trains a fresh model for up to ``--num-iter`` steps while the lr grows exponentially from
``--start-lr`` to ``--end-lr`` (every param group keeps its ratio to the first), stopping once the
smoothed loss exceeds 4x its best; the config's lr schedule and warm-up are not used. Writes
``<config folder>/lr_find/lr_find.csv`` (step, lr, loss, smoothed_loss) and ``lr_find.png``
(loss against lr, log scale) and prints the suggested lr (see ``utils/lr_finder.py``). It is a
probe: it saves no checkpoint and changes no run; use the suggestion as
``--opts trainer.optimizer.kwargs.lr=<lr>`` (the steepest-descent lr is a starting point, usually
within a factor of a few of the best constant lr). One process; frozen features are cached as in
training.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.data_builder import build_dataloader  # noqa: E402
from datasets.feature_cache import cached_loaders  # noqa: E402
from models.model_helper import ModelHelper  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.config_helper import load_config  # noqa: E402
from utils.criterion_helper import build_criterion  # noqa: E402
from utils.dist_helper import DistInfo, select_device  # noqa: E402
from utils.lr_finder import check_sweep, plot_png, range_test, write_csv  # noqa: E402
from utils.misc_helper import create_logger, set_random_seed  # noqa: E402
from utils.optimizer_helper import build_optimizer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="UniAD learning-rate range test")
    parser.add_argument("--config", required=True, help="experiment config.yaml")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--start-lr", type=float, default=1e-7, help="lr of the first step")
    parser.add_argument("--end-lr", type=float, default=1.0, help="lr of the last step")
    parser.add_argument("--num-iter", type=int, default=100, help="steps of the sweep (the loader is cycled)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_sweep(args.start_lr, args.end_lr, args.num_iter)
    cfg = load_config(args.config, args.opts)
    out_dir = os.path.join(cfg.exp_path, "lr_find")
    logger = create_logger("uniad", os.path.join(out_dir, "lr_find.log"))
    set_random_seed(cfg.random_seed, cfg.get("reproduce", False))
    device = select_device(cfg.get("device"), 0)
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=device, distributed=False)
    train_only = {k: v for k, v in cfg.dataset.items() if k != "test"}  # the probe never evaluates
    train_loader, _ = build_dataloader(train_only, False, seed=cfg.random_seed, pin_memory=device.type == "cuda")
    if train_loader is None:
        raise ValueError("the config has no dataset.train section: the range test trains on it")
    model = ModelHelper(cfg.net).to(device)
    optimizer = build_optimizer(cfg.trainer.optimizer, model, model.trainable_names)
    loader, _, model_start = cached_loaders(cfg, model, train_loader, None, dist, logger)
    result = range_test(model, loader, build_criterion(cfg.criterion), optimizer, args.start_lr, args.end_lr,
                        args.num_iter, clip_max_norm=cfg.trainer.get("clip_max_norm"), model_start=model_start)
    write_csv(result, os.path.join(out_dir, "lr_find.csv"))
    plot_png(result, os.path.join(out_dir, "lr_find.png"))
    logger.info("%d steps, lr %.3g .. %.3g; stopped: %s", len(result.lrs), result.lrs[0], result.lrs[-1],
                result.stop_reason)
    print(f"suggested lr: {result.suggestion:.3g} ({result.method}); curve in {out_dir}/lr_find.png; "
          f"use --opts trainer.optimizer.kwargs.lr={result.suggestion:.3g}")
    return 0


if __name__ == "__main__":
    run_cli(main)
