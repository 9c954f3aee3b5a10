"""Evaluation sampler: every index on exactly one rank.

`DistributedSampler` pads the dataset to a multiple of the world size (duplicated test images change the
metrics) and shuffles; `ShardSampler` gives each rank one contiguous slice instead, so gathering the
ranks' outputs yields every test image exactly once and distributed metrics equal single-process ones.

With ``batch_size``, shard boundaries fall on whole batches, so every rank runs exactly the batches a
single process would run: per-image results do not depend on which other images share a batch, and
distributed evaluation is bit-identical to one process (at the same thread count).
"""
from torch.utils.data import Sampler


def shard_bounds(dataset_len, num_replicas, rank, batch_size=1):
    """[start, end) of `rank`'s contiguous shard of whole batches; shard sizes differ by at most one batch."""
    if num_replicas < 1 or not 0 <= rank < num_replicas or batch_size < 1:
        raise ValueError(f"ShardSampler needs num_replicas >= 1, 0 <= rank < num_replicas and batch_size >= 1; "
                         f"got num_replicas={num_replicas}, rank={rank}, batch_size={batch_size}")
    n_batches = -(-dataset_len // batch_size)
    first, last = rank * n_batches // num_replicas, (rank + 1) * n_batches // num_replicas
    return min(first * batch_size, dataset_len), min(last * batch_size, dataset_len)


class ShardSampler(Sampler):
    """Yield `rank`'s contiguous shard of `range(dataset_len)`, in order, with no padding."""

    def __init__(self, dataset_len, num_replicas=1, rank=0, batch_size=1):
        self.start, self.end = shard_bounds(dataset_len, num_replicas, rank, batch_size)

    def __iter__(self):
        return iter(range(self.start, self.end))

    def __len__(self):
        return self.end - self.start

    def set_epoch(self, epoch):
        """No-op (the order is fixed); present so callers may treat all samplers alike."""
