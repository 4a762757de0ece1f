"""Whether a training step's loss and gradient norm were finite, read from the device as late as is safe.

Reading a GPU value holds the host until the GPU has caught up. Read at its own step, the check left
the GPU idle while the next step's kernels were launched: on an H200 the pipeline step ran at 0.65 of
the bare cuDNN step with two reads, 0.72 with one, and 0.97 with the read a step late (bench/README.md).
Where a bad step stops training (`train.skip_nonfinite: false`, the default), its verdict can wait
one step: `StepCheck` copies the step's values to the host without waiting and reads them after the
next step is launched, and whatever keeps weights (validation, a checkpoint, the final record)
settles the pending verdict first, so nothing kept ever holds a bad step. `train.skip_nonfinite`
must know before the optimizer steps, so it reads at once (`step_is_bad`).
"""

from __future__ import annotations

import logging
import math

import torch

from pipeline.library.errors import DataError

log = logging.getLogger("pipeline")


def step_values(accelerator, total: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """On the device: [ranks whose loss is finite, the loss summed over ranks, the gradient norm times the
    ranks] (the norm is already global: gradients were all-reduced). One all-reduce where there are ranks."""
    values = torch.stack([torch.isfinite(total).float(), total.float(), grad_norm.to(total.device).float()])
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, "sum")
    return values


def verdict(skip: bool, values: list[float], world: int, scaled: bool, step: int) -> bool:
    """Whether the step is skipped (`skip`: `train.skip_nonfinite`); a DataError naming the step where it is
    not. A non-finite gradient norm under fp16 is the grad scaler's to skip, not an error."""
    finite, loss, grad_norm = values[0], values[1], values[2] / world
    if finite < world:
        return non_finite(skip, "loss", loss, step)
    if not math.isfinite(grad_norm) and not scaled:
        return non_finite(skip, "gradient norm", grad_norm, step)
    return False


def step_is_bad(skip: bool, accelerator, values: torch.Tensor, step: int) -> bool:
    """The verdict now: one read of the device."""
    return verdict(skip, values.tolist(), accelerator.num_processes, accelerator.scaler is not None, step)


def non_finite(skip: bool, what: str, value: float, step: int) -> bool:
    """True (the step is skipped, with a warning) under `skip`; else the DataError that stops training."""
    if not skip:
        raise DataError(
            f"train: {what} became {value} at step {step + 1}; training stopped, the last good checkpoint is "
            f"kept; lower train.lr, check the data, or set train.skip_nonfinite=true"
        )
    log.warning("train: %s became %s at step %d; step skipped (train.skip_nonfinite)", what, value, step + 1)
    return True


class StepCheck:
    """Each step's verdict, read one step later (or at `settle`); only where a bad step stops training
    (`train.skip_nonfinite: false`): a step to skip must be known before the optimizer steps."""

    def __init__(self, accelerator) -> None:
        self.world, self.scaled = accelerator.num_processes, accelerator.scaler is not None
        self.pending: tuple[torch.Tensor, torch.cuda.Event | None, int] | None = None

    def defer(self, values: torch.Tensor, step: int) -> None:
        """Start copying this step's values to the host and read the previous step's (raising if it was bad)."""
        event = None
        if values.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = values
        previous, self.pending = self.pending, (host, event, step)
        if previous is not None:
            self._read(*previous)

    def settle(self) -> None:
        """Read the pending verdict, if any: before anything keeps the weights."""
        pending, self.pending = self.pending, None
        if pending is not None:
            self._read(*pending)

    def _read(self, host: torch.Tensor, event: torch.cuda.Event | None, step: int) -> None:
        if event is not None:
            event.synchronize()
        verdict(False, host.tolist(), self.world, self.scaled, step)
