"""`build_dataloader(cfg_dataset, distributed)` -> (train_loader, test_loader).

Differences from the original, on purpose:
- the config is never mutated; a split's keys (`train:` / `test:`) override the dataset-level ones in a copy,
  which is what the original's `cfg.update(train)` achieved;
- training always uses a DistributedSampler (also in one process: 1 replica, rank 0), so the sample order
  depends only on (seed, epoch) and a resumed run replays it exactly; the caller calls `set_epoch(epoch)`;
- evaluation uses `ShardSampler`: each test image on exactly one rank, no padding, in file order.
"""
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import Normalize

from datasets.cifar_dataset import CIFAR10, IMAGENET_MEAN, IMAGENET_STD
from datasets.custom_dataset import CustomDataset
from datasets.image_reader import build_image_reader
from datasets.samplers import ShardSampler
from datasets.transforms import RandomColorJitter, TestBaseTransform, TrainBaseTransform


def build_dataloader(cfg_dataset, distributed, *, seed=0, pin_memory=False):
    """Build the loaders of the `dataset` config section; a loader is None when its section is absent."""
    builders = {"custom": build_custom_dataset, "cifar10": build_cifar10_dataset}
    dataset_type = cfg_dataset.get("type", "custom")
    if dataset_type not in builders:
        raise ValueError(f"dataset.type={dataset_type!r} is unknown; expected one of {sorted(builders)}")
    num_replicas, rank = _world(distributed)
    loaders = []
    for split in ("train", "test"):
        if not cfg_dataset.get(split):
            loaders.append(None)
            continue
        cfg = {**cfg_dataset, **cfg_dataset[split]}  # split keys override dataset keys; input untouched
        dataset = builders[dataset_type](cfg, training=split == "train", seed=seed)
        if split == "train":
            sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                                         seed=seed, drop_last=False)
        else:
            sampler = ShardSampler(len(dataset), num_replicas, rank, int(cfg.get("batch_size", 1)))
        loaders.append(_loader(dataset, sampler, cfg, pin_memory, seed))
    return tuple(loaders)


def _world(distributed):
    """(num_replicas, rank): (1, 0) unless distributed with an initialised process group."""
    if not distributed:
        return 1, 0
    if not dist.is_initialized():
        raise RuntimeError("build_dataloader(distributed=True) needs an initialised torch.distributed process "
                           "group; call utils.dist_helper's set-up first or pass distributed=False")
    return dist.get_world_size(), dist.get_rank()


def _loader(dataset, sampler, cfg, pin_memory, seed):
    if "batch_size" not in cfg:
        raise KeyError("dataset.batch_size is missing (images per process and step)")
    workers = int(cfg.get("workers", 0))
    # A private generator: the loader draws its worker seeds from it, not from the global torch RNG,
    # so the model's random stream (jitter, dropout) does not depend on how often a loader is iterated
    # (the feature cache skips the image loader after the first epoch; a resume starts a new iterator).
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=int(cfg["batch_size"]), sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0, drop_last=False,
                      generator=generator)


def _require(cfg, key, split):
    if key not in cfg:
        raise KeyError(f"dataset.{split}.{key} (or dataset.{key}) is missing")
    return cfg[key]


def build_custom_dataset(cfg, training, seed=0):
    """CustomDataset from a merged split config (image_reader, meta_file, input_size, pixel_mean/std, ...);
    `seed` is unused (the augmentations draw from torch's RNG)."""
    split = "train" if training else "test"
    input_size = _require(cfg, "input_size", split)
    if training:
        transform_fn = TrainBaseTransform(input_size, cfg.get("hflip", False), cfg.get("vflip", False),
                                          cfg.get("rotate", False))
    else:
        transform_fn = TestBaseTransform(input_size)
    colorjitter = cfg.get("colorjitter")
    colorjitter_fn = RandomColorJitter.from_params(dict(colorjitter)) if colorjitter and training else None
    normalize_fn = Normalize(_require(cfg, "pixel_mean", split), _require(cfg, "pixel_std", split))
    return CustomDataset(build_image_reader(_require(cfg, "image_reader", split)), _require(cfg, "meta_file", split),
                         training, transform_fn, normalize_fn, colorjitter_fn)


def build_cifar10_dataset(cfg, training, seed=0):
    """CIFAR10 from a merged split config (root_dir, normals, input_size; pixel_mean/std default ImageNet).
    `seed` picks the anomalous test images."""
    split = "train" if training else "test"
    return CIFAR10(_require(cfg, "root_dir", split), training, _require(cfg, "normals", split),
                   cfg.get("input_size", 224), cfg.get("pixel_mean", IMAGENET_MEAN),
                   cfg.get("pixel_std", IMAGENET_STD), seed=seed)
