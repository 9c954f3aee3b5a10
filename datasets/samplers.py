"""Evaluation sampler: every index on exactly one rank.

`DistributedSampler` pads the dataset to a multiple of the world size (duplicated test images change the
metrics) and shuffles; `ShardSampler` gives each rank one contiguous slice instead, so gathering the
ranks' outputs yields every test image exactly once and distributed metrics equal single-process ones.
"""
from torch.utils.data import Sampler


def shard_bounds(dataset_len, num_replicas, rank):
    """[start, end) of `rank`'s contiguous shard; shard sizes differ by at most one."""
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"ShardSampler needs num_replicas >= 1 and 0 <= rank < num_replicas; "
                         f"got num_replicas={num_replicas}, rank={rank}")
    return rank * dataset_len // num_replicas, (rank + 1) * dataset_len // num_replicas


class ShardSampler(Sampler):
    """Yield `rank`'s contiguous shard of `range(dataset_len)`, in order, with no padding."""

    def __init__(self, dataset_len, num_replicas=1, rank=0):
        self.start, self.end = shard_bounds(dataset_len, num_replicas, rank)

    def __iter__(self):
        return iter(range(self.start, self.end))

    def __len__(self):
        return self.end - self.start

    def set_epoch(self, epoch):
        """No-op (the order is fixed); present so callers may treat all samplers alike."""
