"""`train.num_threads: auto`: the tuner keeps the faster thread count and follows a competing process."""

from __future__ import annotations

import json
import time

import pytest
import torch

from pipeline.library.model import ModelSpec, build_model
from pipeline.library.runtime import available_cores
from pipeline.library.threads import ThreadTuner

from .conftest import cli, write_config


@pytest.fixture
def restore_threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


class Machine:
    """A stand-in workload: 2 threads take 0.9 ms on a quiet machine and 10 ms with a competitor; 1 thread 1 ms."""

    def __init__(self) -> None:
        self.competitor = False

    def seconds(self) -> float:
        if torch.get_num_threads() == 1:
            return 0.001
        return 0.010 if self.competitor else 0.0009

    def probe(self) -> None:
        time.sleep(self.seconds())


def test_the_tuner_keeps_the_faster_count_and_follows_a_competitor(restore_threads):
    machine = Machine()
    tuner = ThreadTuner([1, 2], machine.probe, recheck_every=30, window=5)
    assert tuner.choose(0, "start") == 2 and torch.get_num_threads() == 2
    for step in range(1, 11):  # quiet: the step time stays, nothing changes
        tuner.after_step(step, machine.seconds() * 100)
    assert torch.get_num_threads() == 2 and len(tuner.choices) == 1
    machine.competitor = True  # another process takes a core: the step time jumps, the tuner moves to one thread
    for step in range(11, 21):
        tuner.after_step(step, machine.seconds() * 100)
    assert torch.get_num_threads() == 1
    assert "step time rose" in tuner.choices[-1]["reason"] and tuner.choices[-1]["step"] <= 16
    machine.competitor = False  # gone again: the periodic recheck goes back up
    for step in range(21, 70):
        tuner.after_step(step, machine.seconds() * 100)
    assert torch.get_num_threads() == 2 and "recheck" in tuner.choices[-1]["reason"]
    assert all(set(c["probe_ms"]) == {"1", "2"} for c in tuner.choices)


def test_one_candidate_means_no_timing(restore_threads):
    calls = []
    tuner = ThreadTuner([1, 1], lambda: calls.append(1))
    assert not tuner.active
    for step in range(50):
        tuner.after_step(step, 1.0 + step)
    assert calls == [] and tuner.choices == []


def _train_steps(threads: int, precision: torch.dtype | None) -> dict[str, torch.Tensor]:
    torch.set_num_threads(threads)
    spec = ModelSpec(5, 24, 32, 2, instance_norm=True, residual_season=12, season_average=2)
    model = build_model(spec, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = torch.randn(128, 96, 5, generator=data), torch.randn(128, 24, generator=data)
        with torch.autocast("cpu", dtype=precision or torch.bfloat16, enabled=precision is not None):
            loss = (model(x).float() - y).abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.skipif(available_cores() < 2, reason="needs two cores to compare one thread with two")
@pytest.mark.parametrize("precision", [None, torch.bfloat16], ids=["float32", "bf16"])
def test_the_thread_count_changes_no_bits_of_training(restore_threads, precision):
    """What lets `auto` switch counts mid-run and still resume bit for bit (on the machine this runs on)."""
    one, two = _train_steps(1, precision), _train_steps(2, precision)
    assert all(torch.equal(one[k], two[k]) for k in one)


@pytest.mark.slow
def test_auto_threads_are_timed_and_recorded_by_a_real_train(tmp_path):
    config = write_config(tmp_path, {"train.num_threads": "auto", "export.onnx": False})
    for stage in ("ingest", "window", "train"):
        result = cli(stage, "--config", str(config))
        assert result.returncode == 0, result.stderr[-2000:]
    setup = json.loads((tmp_path / "run/train/meta.json").read_text())["setup"]
    assert setup["threads_setting"] == "auto"
    if available_cores() >= 2:
        first = setup["thread_choices"][0]
        assert first["step"] == 0 and first["reason"] == "start" and set(first["probe_ms"]) == {"1", "2"}
        assert setup["threads_per_process"] == first["threads"]
        assert f"train: {first['threads']} threads (start; probe 1:" in result.stderr
    else:
        assert setup["threads_per_process"] == 1 and "thread_choices" not in setup
