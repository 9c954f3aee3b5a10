"""Train UniAD with periodic validation, or evaluate a checkpoint (-e).

Runs as one plain process (CPU or one GPU), under ``torchrun``, or under
``python -m torch.distributed.launch``; the config decides everything else:

    python tools/train_val.py --config experiments/MVTec-AD/config.yaml [-e] [--opts KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.data_builder import build_dataloader  # noqa: E402
from datasets.feature_cache import cached_loaders  # noqa: E402
from models.model_helper import ModelHelper  # noqa: E402
from utils import dist_helper  # noqa: E402
from utils.config_helper import dump_config, load_config  # noqa: E402
from utils.criterion_helper import build_criterion  # noqa: E402
from utils.engine import EpochPlan, train_one_epoch  # noqa: E402
from utils.lr_helper import build_scheduler  # noqa: E402
from utils.misc_helper import create_logger, set_random_seed  # noqa: E402
from utils.optimizer_helper import build_optimizer  # noqa: E402
from utils.misc_helper import BestTracker  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.run_state import load_weights, record_validation, resume_if_any, save_epoch  # noqa: E402
from utils.speed_switches import compile_child, resolve_amp  # noqa: E402
from utils.thresholds import save_thresholds_json  # noqa: E402
from utils.validation import log_summary, open_writer, validate_with_thresholds  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="UniAD training and evaluation")
    parser.add_argument("--config", default="./config.yaml", help="experiment config.yaml")
    parser.add_argument("-e", "--evaluate", action="store_true", help="evaluate saver.load_path and exit")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. trainer.max_epoch=2 net.backbone.kwargs.pretrained=False")
    dist_helper.add_launcher_args(parser)  # --local-rank / --local_rank of torch.distributed.launch
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.opts)
    dist = dist_helper.init_distributed(cfg.get("port"), device=cfg.get("device"), local_rank=args.local_rank)
    set_random_seed(cfg.random_seed, cfg.get("reproduce", False))
    log_dir = cfg.saver.log_dir
    logger = create_logger("uniad", os.path.join(log_dir, "train.log"), dist.rank)
    logger.info("config %s, %d process(es), device %s", cfg.config_file, dist.world_size, dist.device)
    if dist.rank == 0:
        dump_config(cfg, os.path.join(log_dir, "config.yaml"))

    train_loader, val_loader = build_dataloader(cfg.dataset, dist.distributed, seed=cfg.random_seed,
                                                pin_memory=dist.device.type == "cuda")
    model = ModelHelper(cfg.net).to(dist.device)
    amp = resolve_amp(cfg.trainer.get("amp", False), dist.device, logger)
    if cfg.trainer.get("compile", False):
        compile_child(model, "reconstruction", logger)
    ddp_model = dist_helper.wrap_model(model, dist)
    criterion = build_criterion(cfg.criterion)
    writer = open_writer(log_dir, dist.rank)

    if args.evaluate:
        load_weights(cfg.saver.get("load_path"), model, logger, required=True)
        _, thresholds = validate_with_thresholds(cfg, model, val_loader, criterion, epoch=None, writer=writer,
                                                 logger=logger, visualize=True, amp=amp)
        if dist.rank == 0:  # e.g. for a converted original checkpoint: tools/infer.py --thresholds
            save_thresholds_json(thresholds, os.path.join(log_dir, "thresholds.json"))
        dist_helper.cleanup()
        return 0

    trainer = cfg.trainer
    optimizer = build_optimizer(trainer.optimizer, model, model.trainable_names)
    scheduler = build_scheduler(trainer.lr_scheduler, optimizer, trainer.get("warmup_epochs", 0))
    key_metric = cfg.evaluator.key_metric
    tracker = BestTracker(trainer.get("early_stop_patience") or 0)
    start_epoch = resume_if_any(cfg, model, optimizer, scheduler, tracker, logger)
    train_iter, val_iter, model_start = cached_loaders(cfg, model, train_loader, val_loader, dist, logger)

    run_start = time.time()
    for epoch in range(start_epoch, trainer.max_epoch):
        train_loader.sampler.set_epoch(epoch)
        plan = EpochPlan(epoch, trainer.max_epoch, trainer.print_freq_step, trainer.get("tb_freq_step", 1),
                         trainer.get("clip_max_norm"), trainer.get("accumulate_steps", 1), start_epoch,
                         run_start, model_start, amp=amp)
        train_one_epoch(ddp_model, train_iter, criterion, optimizer, plan, logger, writer)
        scheduler.step()
        metrics, thresholds, is_best = None, None, False
        if (epoch + 1) % trainer.val_freq_epoch == 0 or epoch + 1 == trainer.max_epoch:
            metrics, thresholds = validate_with_thresholds(cfg, model, val_iter, criterion, epoch + 1, writer,
                                                           logger, model_start=model_start, amp=amp)
            is_best = record_validation(tracker, key_metric, metrics, epoch + 1)
        save_epoch(cfg, epoch + 1, model, optimizer, scheduler, tracker, metrics, dist.rank, is_best, thresholds)
        if tracker.should_stop:
            logger.info("early stop: %s did not improve for %d validations", key_metric, tracker.patience)
            break
    log_summary(logger, key_metric, tracker, time.time() - run_start)
    dist_helper.cleanup()
    return 0


if __name__ == "__main__":
    run_cli(main)  # user errors: one line on stderr, exit 2 (3: diverged); see utils/cli.py
