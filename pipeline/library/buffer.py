"""The training data path: one contiguous buffer per run, batches gathered by one index op.

A window is a `(series, start)` pair; gathering a batch is `values[offsets[series] + start +
arange(lookback + horizon)]`, a single vectorised read. When the buffer fits on the device it
lives there for the whole run, so a training step does no host work and no host copy. The
gathered parts become the model's inputs in `pipeline.library.inputs` (the same function
serving uses). Calendar channels are computed for every step from each series' start phase
(`pipeline.library.calendar`), covariates gathered from their own buffer by the same index op.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.library import covariates as cov
from pipeline.library import scaling
from pipeline.library.calendar import Calendar, OffsetChanges, encode
from pipeline.library.chunks import series_chunks
from pipeline.library.inputs import assemble_inputs
from pipeline.library.model_spec import ModelSpec
from pipeline.library.records import SeriesTable
from pipeline.library.store import read_covariates


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
    offset_changes: OffsetChanges | None = None  # the calendar zone's summer time, where the cycles follow it
    covariates: torch.Tensor | None = None  # (n_points, K) float32 scaled covariates, past ones first
    n_past: int = 0  # how many of the covariates are past covariates
    n_future_covariates: int = 0
    static: torch.Tensor | None = None  # (n_series, S) float32 standardised static covariates
    series_index: torch.Tensor | None = None  # (n_series,) float32: the embedding row of each series
    observed: torch.Tensor | None = None  # (n_points,) float32: `values` with NaN where data.missing filled a point

    @property
    def partial_targets(self) -> bool:
        """Whether some targets were not observed: they come out of `gather` as NaN, and losses leave them out."""
        return self.observed is not None

    def __post_init__(self) -> None:
        self.device = torch.device(self.device or self.values.device)
        self._span = torch.arange(self.lookback + self.horizon, device=self.values.device)
        self._host_to_device = self.values.device.type != self.device.type  # cpu vs cpu:0 is no copy
        self._ahead = self.phase0 is not None or self.n_future_covariates > 0

    @classmethod
    def from_ingest(
        cls,
        raw: np.ndarray,
        series: SeriesTable,
        lookback: int,
        horizon: int,
        device: torch.device | str = "cpu",
        resident: str | bool = True,
        transform: str = "none",
        calendar: Calendar | None = None,
        covariates: np.ndarray | None = None,
        spec: ModelSpec | None = None,
        filled: np.ndarray | None = None,
    ) -> WindowBuffer:
        """Transform and scale the raw buffer per series into one float32 array (no float64 copy).

        The series table gives each series' length and scaler. `covariates` (n_points, K) are
        the raw time-varying covariates `spec` names (past ones first); `spec` also says whether
        the model reads static covariates and a series index (the table's `index`: a served
        model keeps its training positions). `filled` (n_points,) marks the points data.missing
        filled: inputs as they are, but targets NaN (a second float32 buffer, only then).
        """
        scaled = np.empty(len(raw), dtype=np.float32)
        lengths, offsets = series.lengths, series.offsets
        locs, spreads = series.stats.loc.astype(np.float32), series.stats.scale.astype(np.float32)
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
        extra = {}
        if calendar is not None and calendar.features:
            p0, r = calendar.phases(series.starts)
            phase0, rate = torch.from_numpy(p0).to(home), torch.from_numpy(r).to(home)
            changes = calendar.offset_changes(series.starts, int(lengths.max()))
            if changes is not None:
                extra["offset_changes"] = changes.to(home)
        if spec is not None and spec.covariates:
            extra.update(
                covariates=torch.from_numpy(cov.standardise(covariates, series)).to(home),
                n_past=len(spec.past_covariates),
                n_future_covariates=len(spec.future_covariates),
            )
        if spec is not None and spec.static_covariates:
            extra["static"] = torch.from_numpy(series.stats.static.astype(np.float32)).to(home)
        if spec is not None and spec.series_embedding:
            extra["series_index"] = torch.from_numpy(series.stats.index.astype(np.float32)).to(home)
        if filled is not None and filled.any():
            observed = scaled.copy()
            observed[filled] = np.nan
            observed_t = torch.from_numpy(observed)
            extra["observed"] = (observed_t.pin_memory() if values.is_pinned() else observed_t).to(home)
        offsets_t = torch.from_numpy(offsets).to(home)
        return cls(values.to(home), offsets_t, lookback, horizon, device, phase0, rate, **extra)

    @classmethod
    def for_model(
        cls, spec: ModelSpec, ingest_dir: Path, raw: np.ndarray, series: SeriesTable, freq: str, lookback: int,
        transform: str,
    ) -> WindowBuffer:  # fmt: skip
        """The inputs a trained model reads, built from an ingest output (evaluate, export, the registry)."""
        return cls.from_ingest(
            raw,
            series,
            lookback,
            spec.horizon,
            transform=transform,
            calendar=Calendar(spec.calendar, freq, spec.calendar_zone),
            covariates=read_covariates(ingest_dir, spec.covariates),
            spec=spec,
        )

    def gather(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets (B, horizon)) for `pairs` (B, 2) of (series, start).

        Inputs are (B, lookback, 1) for the target alone, else (B, T, channels) as
        `pipeline.library.inputs` lays them out.
        """
        pos = self.offsets[pairs[:, 0]] + pairs[:, 1]
        windows = self.values[pos[:, None] + self._span[None, :]]
        steps = self.lookback + self.horizon if self._ahead else self.lookback
        series = pairs[:, 0]
        inputs = assemble_inputs(
            windows[:, : self.lookback],
            self.horizon,
            self.n_past,
            covariates=None if self.covariates is None else self.covariates[pos[:, None] + self._span[None, :steps]],
            calendar=None if self.phase0 is None else self._calendar(series, pairs[:, 1:2] + self._span),
            static=None if self.static is None else self.static[series],
            series_index=None if self.series_index is None else self.series_index[series],
        )
        targets = windows[:, self.lookback :]
        if self.observed is not None:  # NaN where the target was filled, not observed
            targets = self.observed[pos[:, None] + self._span[None, self.lookback :]]
        if self._host_to_device:
            inputs = inputs.pin_memory().to(self.device, non_blocking=True)
            targets = targets.pin_memory().to(self.device, non_blocking=True)
        return inputs, targets

    def _calendar(self, series: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        changes = self.offset_changes
        shift = None if changes is None else changes.cycles(series, positions)
        return encode(self.phase0[series], self.rate, positions, shift)


def buffer_fits(nbytes: int, device: torch.device, resident: str | bool) -> bool:
    """Keep the buffer on the accelerator when asked, or (auto) when it takes under half its free memory."""
    if device.type == "cpu" or resident is False or resident == "false":
        return device.type == "cpu"
    if resident is True or resident == "true":
        return True
    free, _ = torch.cuda.mem_get_info(device) if device.type == "cuda" else (float("inf"), None)
    return nbytes < 0.5 * free
