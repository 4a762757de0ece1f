"""Global training: one model for many synthetic series of different lengths and scales."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.config import load_config

from .conftest import cli_in_process

CONFIG = "configs/global_synthetic.yaml"


def test_shipped_config_describes_hundreds_of_series_of_different_lengths():
    cfg = load_config(CONFIG)
    s = cfg.data.synthetic
    assert cfg.data.source == "synthetic" and s.n_series >= 100 and s.min_length < s.length


@pytest.mark.slow
def test_one_model_many_series_with_per_series_metrics(tmp_path):
    """The shipped config, shrunk to seconds: every series gets its row in per_series.csv."""
    shrink = [
        f"output_dir={tmp_path / 'run'}",
        "data.synthetic.n_series=60",
        "data.synthetic.length=480",
        "data.synthetic.min_length=240",
        "window.lookback=48",
        "window.horizon=12",
        "window.stride=2",
        "evaluate.backtest.step=6",
        "model.hidden_size=16",
        "model.num_layers=1",
        "train.batch_size=128",
        "train.max_steps=30",
        "train.eval_every=15",
        "train.checkpoint_every=0",
        "export.onnx=false",
        "tracking.backend=none",
    ]
    result = cli_in_process("run", "--config", CONFIG, *shrink)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    ingest = json.loads((run / "ingest/meta.json").read_text())
    lengths = [r["length"] for r in ingest["series"]]
    assert ingest["n_series"] == 60 and min(lengths) < 300 < max(lengths)
    levels = [abs(r["mean"]) for r in ingest["series"]]
    assert max(levels) > 50 * min(levels)  # scales differ by far more than an order of magnitude
    metrics = json.loads((run / "evaluate/metrics.json").read_text())
    per_series = pd.read_csv(run / "evaluate/per_series.csv")
    assert metrics["n_series"] == len(per_series) == 60
    assert per_series["n_windows"].sum() == metrics["n_windows"]
    assert per_series["model_mase"].notna().all()
    report = (run / "evaluate/report.md").read_text()
    assert "Per-series model MASE" in report and "## Backtest" in report
    assert metrics["backtest"]["per_fold"][0]["n_windows"] == 60
