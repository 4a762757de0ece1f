"""Forecasting many windows with a trained model: batched, sharded over processes, back to original units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from pipeline.library import scaling
from pipeline.library.buffer import WindowBuffer
from pipeline.library.model import build_model
from pipeline.library.model_spec import ModelSpec
from pipeline.library.records import SeriesStats


def load_model(weights: Path, spec: ModelSpec) -> torch.nn.Module:
    """The network of `spec` with the weights of a safetensors file, in eval mode on the CPU."""
    model = build_model(spec)
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


@torch.no_grad()
def forecast_windows(model: torch.nn.Module, buffer: WindowBuffer, pairs: np.ndarray, batch_size: int) -> np.ndarray:
    """Scaled forecasts (W, horizon[, Q]) for all windows, batched (never a loop per window)."""
    out = np.empty((len(pairs), *model.spec.output_shape), dtype=np.float32)
    tensor = torch.from_numpy(pairs)
    for start in range(0, len(pairs), batch_size):
        x, _ = buffer.gather(tensor[start : start + batch_size])
        out[start : start + batch_size] = model(x).float().numpy()
    return out


def forecast_sharded(model, buffer: WindowBuffer, pairs: np.ndarray, batch_size: int, state) -> np.ndarray:
    """Each process forecasts a contiguous shard; the shards are gathered back in order.

    Every window is scored exactly once, whatever the number of processes (no padding, no
    duplicated samples as with a distributed sampler).
    """
    shards = np.array_split(np.arange(len(pairs)), state.num_processes)
    mine = forecast_windows(model, buffer, pairs[shards[state.process_index]], batch_size)
    if state.num_processes == 1:
        return mine
    from accelerate.utils import gather_object

    return np.concatenate(gather_object([mine]))


def to_original_units(scaled: np.ndarray, stats: SeriesStats, series: np.ndarray, transform: str) -> np.ndarray:
    """Model outputs (W, horizon[, Q]) in scaled space back to the data's units, in float64."""
    shape = (-1,) + (1,) * (scaled.ndim - 1)
    return scaling.inverse(scaled, stats.loc[series].reshape(shape), stats.scale[series].reshape(shape), transform)


def point_of(output: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The point forecast of a model output: itself, or the median of a quantile forecast."""
    return output if spec.median_index is None else output[..., spec.median_index]
