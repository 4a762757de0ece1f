"""What each training step trains on and at which learning rate: pure functions of (seed, step).

World-size invariance rests here: the global batch of every step is a permutation of the
training windows that depends on (seed, epoch) only, cut into `batch_size` slices; each process
takes its share of each slice, so 1 and N processes see the same global batches. Nothing about
the batch order or the learning rate needs saving in a checkpoint beyond the `TrainState`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from pipeline.library.records import TrainState


@lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """Permutation of the training windows for one epoch; depends on (seed, epoch) only."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).to(device)


def local_batches(
    train_pairs: torch.Tensor, batch_size: int, accumulation: int, seed: int, state: TrainState, rank: int, world: int
) -> list:
    """This process's micro-batches of the current global batch (`batch_size` windows over all processes)."""
    order = epoch_order(seed, state.epoch, len(train_pairs), train_pairs.device)
    batch = order[state.batch_in_epoch * batch_size : (state.batch_in_epoch + 1) * batch_size]
    micro = batch.view(accumulation, world, -1)[:, rank]
    return [train_pairs[m] for m in micro]


def advance(state: TrainState, batches_per_epoch: int) -> None:
    state.step += 1
    state.batch_in_epoch += 1
    if state.batch_in_epoch == batches_per_epoch:
        state.epoch += 1
        state.batch_in_epoch = 0


def lr_at(step: int, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio * lr`: a pure function of the step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
