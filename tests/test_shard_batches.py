"""Evaluation shards fall on whole batches, so each rank runs the batches one process would run."""
import pytest

from datasets.samplers import ShardSampler


@pytest.mark.parametrize("length, world, batch", [(10, 2, 4), (17, 3, 4), (3, 4, 2), (0, 2, 8), (16, 2, 8)])
def test_shards_are_whole_batches_covering_every_index_once(length, world, batch):
    shards = [list(ShardSampler(length, world, r, batch)) for r in range(world)]
    assert sum(shards, []) == list(range(length))
    single = [list(range(i, min(i + batch, length))) for i in range(0, length, batch)]
    per_rank = [[s[i:i + batch] for i in range(0, len(s), batch)] for s in shards]
    assert sum(per_rank, []) == single  # the same batches, in the same order


def test_bad_batch_size_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        ShardSampler(10, 2, 0, 0)
