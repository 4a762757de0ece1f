"""The forecaster network: the tutorial's LSTM done right.

Inputs are `(batch, lookback, features)` (`batch_first`), the last hidden state of the top
layer goes through one linear head to all `horizon` outputs at once (direct multi-step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network; saved beside the weights."""

    input_size: int
    horizon: int
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.0
    cell: str = "lstm"

    def to_dict(self) -> dict:
        return asdict(self)


class RecurrentForecaster(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[spec.cell]
        self.rnn = rnn(
            input_size=spec.input_size,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            dropout=spec.dropout if spec.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(spec.hidden_size, spec.horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1, :])


def build_model(spec: ModelSpec, seed: int | None = None) -> RecurrentForecaster:
    """A fresh model; with `seed`, its initial weights depend on nothing else (not on the rank)."""
    if seed is None:
        return RecurrentForecaster(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RecurrentForecaster(spec)
