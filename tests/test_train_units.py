"""Pure pieces of the training loop: schedule, batch order and per-rank slicing."""

import itertools
import math

import pytest
import torch

from pipeline.config import load_config
from pipeline.library.records import TrainState
from pipeline.library.schedule import advance, epoch_order, local_batches, lr_at


def cfg_with(**train):
    return load_config(None, [f"train.{k}={v}" for k, v in train.items()])


def test_lr_schedule_warmup_then_cosine():
    t = cfg_with(lr=0.01, warmup_steps=10, max_steps=110, min_lr_ratio=0.1).train

    def lr(step: int) -> float:
        return lr_at(step, t.lr, t.warmup_steps, t.max_steps, t.min_lr_ratio)

    assert lr(0) == pytest.approx(0.001)
    assert lr(9) == pytest.approx(0.01)
    assert lr(10) == pytest.approx(0.01)
    assert lr(60) == pytest.approx(0.001 + 0.009 * 0.5)  # half way: cosine at pi/2
    assert lr(110) == pytest.approx(0.001)
    values = [lr(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = epoch_order(0, 1, 100, torch.device("cpu"))
    b = epoch_order(0, 1, 100, torch.device("cpu"))
    assert torch.equal(a, b)
    assert sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, epoch_order(0, 2, 100, torch.device("cpu")))
    assert not torch.equal(a, epoch_order(1, 1, 100, torch.device("cpu")))


@pytest.mark.parametrize(("world", "accum"), [(1, 1), (2, 1), (2, 2), (4, 2)])
def test_ranks_split_the_same_global_batch(world, accum):
    """World-size invariance: the union of every rank's micro-batches is the global batch."""
    cfg = cfg_with(batch_size=16, gradient_accumulation_steps=accum)
    pairs = torch.stack([torch.arange(100), torch.arange(100) * 10], dim=1)
    state = TrainState(epoch=3, batch_in_epoch=2)
    expected = pairs[epoch_order(cfg.seed, 3, 100, pairs.device)[32:48]]
    t = cfg.train
    parts = [
        local_batches(pairs, t.batch_size, t.gradient_accumulation_steps, cfg.seed, state, rank, world)
        for rank in range(world)
    ]
    assert all(len(p) == accum for p in parts)
    assert all(m.shape == (16 // (world * accum), 2) for p in parts for m in p)
    # micro-batch a of every rank, in rank order, is the a-th slice of the global batch
    joined = torch.cat([parts[r][a] for a in range(accum) for r in range(world)])
    assert torch.equal(joined, expected)


def test_advance_rolls_over_epochs():
    state = TrainState()
    for _ in range(7):
        advance(state, batches_per_epoch=3)
    assert (state.step, state.epoch, state.batch_in_epoch) == (7, 2, 1)
    assert math.isinf(TrainState().best_val)
