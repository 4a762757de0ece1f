"""The training data path: one contiguous buffer per run, batches gathered by one index op.

A window is a `(series, start)` pair; gathering a batch is `values[offsets[series] + start +
arange(lookback + horizon)]`, a single vectorised read. When the buffer fits on the device it
lives there for the whole run, so a training step does no host work and no host copy.

With calendar features the inputs span the horizon too: `(B, lookback + horizon, 1 + C)`,
the target channel zero over the horizon (never the future values) and the calendar channels
computed for every step from each series' start phase (`pipeline.calendar`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import scaling
from pipeline.calendar import Calendar, encode
from pipeline.chunks import series_chunks


@dataclass
class WindowBuffer:
    """Scaled values of every series back to back, with each series' offset.

    `values` lives on the training device when it fits (no copy per step) or in host memory;
    batches always come out on `device` (from the host through pinned, asynchronous copies).
    """

    values: torch.Tensor  # (n_points,) float32, scaled per series
    offsets: torch.Tensor  # (n_series,) int64, on the same device as values
    lookback: int
    horizon: int
    device: torch.device | None = None
    phase0: torch.Tensor | None = None  # (n_series, F) float64 calendar phases at each series' start
    rate: torch.Tensor | None = None  # (F,) float64 cycles per step

    def __post_init__(self) -> None:
        self.device = torch.device(self.device or self.values.device)
        self._span = torch.arange(self.lookback + self.horizon, device=self.values.device)
        self._host_to_device = self.values.device.type != self.device.type  # cpu vs cpu:0 is no copy

    @classmethod
    def from_ingest(
        cls,
        raw: np.ndarray,
        records: list[dict],
        lookback: int,
        horizon: int,
        device: torch.device | str = "cpu",
        resident: str | bool = True,
        transform: str = "none",
        calendar: Calendar | None = None,
    ) -> WindowBuffer:
        """Transform and scale the raw buffer per series into one float32 array (no float64 copy).

        Each record's `mean` is its location and `scale` its spread (see `pipeline.scaling`).
        """
        scaled = np.empty(len(raw), dtype=np.float32)
        lengths = np.array([r["length"] for r in records], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        locs = np.array([r["mean"] for r in records], dtype=np.float32)
        spreads = np.array([r["scale"] for r in records], dtype=np.float32)
        for first, stop in series_chunks(offsets):  # chunks of series: memory stays at one float32 buffer
            part = slice(offsets[first], offsets[stop - 1] + lengths[stop - 1])
            per_point = lengths[first:stop]
            loc, spread = np.repeat(locs[first:stop], per_point), np.repeat(spreads[first:stop], per_point)
            scaling.forward(raw[part], loc, spread, transform, out=scaled[part])
        device = torch.device(device)
        home = device if buffer_fits(scaled.nbytes, device, resident) else torch.device("cpu")
        values = torch.from_numpy(scaled)
        if home.type == "cpu" and device.type == "cuda":
            values = values.pin_memory()
        phase0 = rate = None
        if calendar is not None and calendar.features:
            p0, r = calendar.phases([rec["start"] for rec in records])
            phase0, rate = torch.from_numpy(p0).to(home), torch.from_numpy(r).to(home)
        return cls(values.to(home), torch.from_numpy(offsets).to(home), lookback, horizon, device, phase0, rate)

    def gather(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets (B, horizon)) for `pairs` (B, 2) of (series, start).

        Inputs are (B, lookback, 1), or with calendar features (B, lookback + horizon, 1 + C).
        """
        pos = self.offsets[pairs[:, 0]] + pairs[:, 1]
        windows = self.values[pos[:, None] + self._span[None, :]]
        if self.phase0 is None:
            if self._host_to_device:
                windows = windows.pin_memory().to(self.device, non_blocking=True)
            return windows[:, : self.lookback, None], windows[:, self.lookback :]
        known = F.pad(windows[:, : self.lookback], (0, self.horizon))  # the horizon's values: never an input
        cal = encode(self.phase0[pairs[:, 0]], self.rate, pairs[:, 1:2] + self._span[None, :])
        inputs, targets = torch.cat([known[..., None], cal], dim=-1), windows[:, self.lookback :]
        if self._host_to_device:
            inputs = inputs.pin_memory().to(self.device, non_blocking=True)
            targets = targets.pin_memory().to(self.device, non_blocking=True)
        return inputs, targets


def buffer_fits(nbytes: int, device: torch.device, resident: str | bool) -> bool:
    """Keep the buffer on the accelerator when asked, or (auto) when it takes under half its free memory."""
    if device.type == "cpu" or resident is False or resident == "false":
        return device.type == "cpu"
    if resident is True or resident == "true":
        return True
    free, _ = torch.cuda.mem_get_info(device) if device.type == "cuda" else (float("inf"), None)
    return nbytes < 0.5 * free
