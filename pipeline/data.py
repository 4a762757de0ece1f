"""The training data path: one contiguous buffer per run, batches gathered by one index op.

A window is a `(series, start)` pair; gathering a batch is `values[offsets[series] + start +
arange(lookback + horizon)]`, a single vectorised read. When the buffer fits on the device it
lives there for the whole run, so a training step does no host work and no host copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class WindowBuffer:
    """Scaled values of every series back to back, with each series' offset."""

    values: torch.Tensor  # (n_points,) float32, scaled per series
    offsets: torch.Tensor  # (n_series,) int64
    lookback: int
    horizon: int

    @classmethod
    def from_ingest(
        cls, raw: np.ndarray, records: list[dict], lookback: int, horizon: int, device: torch.device | str = "cpu"
    ) -> WindowBuffer:
        lengths = np.array([r["length"] for r in records], dtype=np.int64)
        mean = np.repeat(np.array([r["mean"] for r in records]), lengths)
        scale = np.repeat(np.array([r["scale"] for r in records]), lengths)
        scaled = ((raw.astype(np.float64) - mean) / scale).astype(np.float32)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return cls(
            values=torch.from_numpy(scaled).to(device),
            offsets=torch.from_numpy(offsets).to(device),
            lookback=lookback,
            horizon=horizon,
        )

    def to(self, device: torch.device | str) -> WindowBuffer:
        return WindowBuffer(self.values.to(device), self.offsets.to(device), self.lookback, self.horizon)

    def gather(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs (B, lookback, 1), targets (B, horizon)) for `pairs` (B, 2) of (series, start)."""
        span = torch.arange(self.lookback + self.horizon, device=self.values.device)
        pos = self.offsets[pairs[:, 0]] + pairs[:, 1]
        windows = self.values[pos[:, None] + span[None, :]]
        return windows[:, : self.lookback, None], windows[:, self.lookback :]
