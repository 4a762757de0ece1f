"""Real multi-process training on CPU (torchrun + gloo): DDP, world-size invariance, sharded eval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.library.model import ModelSpec, build_model

from .conftest import cli_in_process, load_weights, torchrun, write_config

pytestmark = pytest.mark.slow

# Same trajectory up to float summation order: 20 AdamW steps on a 1-layer LSTM stay this close.
ATOL = 2e-5

BASE = {
    "train.max_steps": 20,
    "train.eval_every": 10,
    "train.checkpoint_every": 0,
    "train.num_threads": 1,
    "export.onnx": False,
}


def prepared(tmp_path, name, **overrides):
    """A config whose ingest and window stages are done (in this process), ready to train."""
    config = write_config(tmp_path / name, {**BASE, **overrides})
    for stage in ("ingest", "window"):
        result = cli_in_process(stage, "--config", str(config))
        assert result.returncode == 0, result.stderr[-2000:]
    return config


def assert_same_weights(a, b, atol):
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= atol, f"largest parameter difference {worst:.3g} > {atol}"
    return worst


def one_process(*args: str):
    """A 1-process run (the reference for DDP): the CLI's `main` in this process, with torchrun's CPU setting.
    torchrun with one process is the same run (world size 1: no process group), after two more Python starts."""
    return cli_in_process(*args, env={"ACCELERATE_USE_CPU": "true"})


def test_two_processes_train_the_same_model_as_one(tmp_path):
    one = prepared(tmp_path, "one")
    two = prepared(tmp_path, "two")
    r1 = one_process("train", "--config", str(one))
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = torchrun(2, "train", "--config", str(two))
    assert r2.returncode == 0, r2.stderr[-3000:]

    meta = json.loads((tmp_path / "two/run/train/meta.json").read_text())
    assert meta["setup"]["world_size"] == 2
    assert meta["setup"]["processes"] == [{"rank": 0, "world_size": 2}, {"rank": 1, "world_size": 2}]
    assert json.loads((tmp_path / "one/run/train/meta.json").read_text())["setup"]["world_size"] == 1

    assert_same_weights(
        tmp_path / "one/run/train/model.safetensors", tmp_path / "two/run/train/model.safetensors", ATOL
    )
    # the runs really trained: the weights moved far more than the tolerance from their start
    init = build_model(ModelSpec(**meta["model"]), seed=0).state_dict()
    final = load_weights(tmp_path / "two/run/train/model.safetensors")
    assert max(float((final[k] - init[k]).abs().max()) for k in init) > 100 * ATOL

    # evaluation under 2 processes scores every test window exactly once: same numbers as 1 process
    e1 = one_process("evaluate", "--config", str(two), "--force")
    assert e1.returncode == 0, e1.stderr[-3000:]
    single = json.loads((tmp_path / "two/run/evaluate/metrics.json").read_text())
    e2 = torchrun(2, "evaluate", "--config", str(two), "--force")
    assert e2.returncode == 0, e2.stderr[-3000:]
    double = json.loads((tmp_path / "two/run/evaluate/metrics.json").read_text())
    assert double["n_windows"] == single["n_windows"]
    for method in ("model",):
        for metric, value in single[method].items():
            assert double[method][metric] == pytest.approx(value, rel=1e-6), metric
    assert double["baselines"] == single["baselines"]


def test_gradient_accumulation_matches_the_same_effective_batch(tmp_path):
    plain = prepared(tmp_path, "plain")
    accum = prepared(tmp_path, "accum", **{"train.gradient_accumulation_steps": 2})
    for config in (plain, accum):
        result = cli_in_process("train", "--config", str(config), "train.num_threads=1")
        assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(
        tmp_path / "plain/run/train/model.safetensors", tmp_path / "accum/run/train/model.safetensors", ATOL
    )


def test_batch_size_not_divisible_by_world_size_is_a_config_error(tmp_path):
    config = prepared(tmp_path, "odd", **{"train.batch_size": 63})
    result = torchrun(2, "train", "--config", str(config))
    assert result.returncode != 0
    assert "train.batch_size (63) must be divisible by the number of processes (2)" in result.stderr
    # our processes fail cleanly (exit 2, one line); torchrun itself then reports the failed child
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr
    assert "exitcode  : 2" in result.stderr


def test_filled_targets_leave_two_processes_training_the_same_model_as_one(tmp_path):
    """Gaps filled by data.missing are inputs but not targets: each rank's loss leaves them out over a fixed
    denominator, so the averaged gradient, and the weights, do not depend on the number of processes."""
    from pipeline.config import SyntheticConfig
    from pipeline.library.synthetic import generate_synthetic

    data = generate_synthetic(SyntheticConfig(n_series=4, length=400, min_length=300, freq="h", seed=1))
    gaps = data.groupby("series", observed=True).cumcount().isin([*range(60, 72), *range(250, 262)])
    data[~gaps].to_csv(tmp_path / "gappy.csv", index=False)
    overrides = {
        "data.source": str(tmp_path / "gappy.csv"), "data.id_column": "series", "data.target_column": "value",
        "data.missing": "interpolate",
    }  # fmt: skip
    one, two = prepared(tmp_path, "one", **overrides), prepared(tmp_path, "two", **overrides)
    meta = json.loads((tmp_path / "one/run/ingest/meta.json").read_text())
    assert meta["filled_points"] == 4 * 24
    r1 = one_process("train", "--config", str(one))
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = torchrun(2, "train", "--config", str(two))
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert_same_weights(
        tmp_path / "one/run/train/model.safetensors", tmp_path / "two/run/train/model.safetensors", ATOL
    )
    rows = [json.loads(line) for line in (tmp_path / "one/run/train/metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert all(np.isfinite(r["val_loss"]) for r in rows if "val_loss" in r)
