"""`train.num_threads: auto`: the tuner keeps the faster thread count and follows a competing process."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from pipeline.library.model import ModelSpec, build_model
from pipeline.library.runtime import available_cores
from pipeline.library.threads import ThreadTuner

from .conftest import cli, needs_cpu_bf16, write_config


@pytest.fixture
def restore_threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


class Machine:
    """A stand-in training step: 2 threads take 0.09 s on a quiet machine, 1.0 s with a competitor; 1 thread 0.1 s."""

    def __init__(self) -> None:
        self.competitor = False

    def step_seconds(self) -> float:
        if torch.get_num_threads() == 1:
            return 0.1
        return 1.0 if self.competitor else 0.09


def _run(tuner: ThreadTuner, machine: Machine, steps: range) -> None:
    for step in steps:
        tuner.after_step(step, machine.step_seconds())


def test_the_tuner_keeps_the_faster_count_and_follows_a_competitor(restore_threads):
    machine = Machine()
    tuner = ThreadTuner([1, 2], trials=3, window=5, recheck_every=30)
    tuner.start(0)
    assert torch.get_num_threads() == 1 and tuner.comparing  # times one thread, then the cores
    _run(tuner, machine, range(1, 7))
    assert not tuner.comparing and torch.get_num_threads() == 2
    assert tuner.choices[0]["step_ms"] == {"1": 100.0, "2": 90.0} and tuner.choices[0]["reason"] == "start"
    _run(tuner, machine, range(7, 20))  # quiet: nothing changes
    assert torch.get_num_threads() == 2 and len(tuner.choices) == 1
    machine.competitor = True  # another process takes a core: the step time jumps, the tuner moves to one thread
    _run(tuner, machine, range(20, 40))
    assert torch.get_num_threads() == 1
    jumped = tuner.choices[-1]
    assert "step time rose" in jumped["reason"] and jumped["step"] < 30 and jumped["threads"] == 1
    machine.competitor = False  # gone again: the periodic recheck goes back up
    _run(tuner, machine, range(40, 90))
    assert torch.get_num_threads() == 2 and "recheck" in tuner.choices[-1]["reason"]


def test_a_clearly_slower_candidate_is_not_timed_to_the_end(restore_threads):
    machine = Machine()
    machine.competitor = True
    tuner = ThreadTuner([1, 2], trials=3)
    tuner.start(0)  # 1 thread first (0.1 s a step), then 2 threads (1.0 s): cut after one step
    _run(tuner, machine, range(1, 5))
    assert torch.get_num_threads() == 1 and tuner.choices[0]["threads"] == 1


def test_a_confirmed_choice_is_rechecked_less_often(restore_threads):
    machine = Machine()
    tuner = ThreadTuner([1, 2], trials=2, window=3, recheck_every=10, longest_recheck=40)
    tuner.start(0)
    _run(tuner, machine, range(1, 200))
    steps = [c["step"] for c in tuner.choices]
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1] and max(gaps) <= 40 + 2 * 2
    assert all(c["threads"] == 2 for c in tuner.choices)


def test_one_candidate_means_no_timing(restore_threads):
    tuner = ThreadTuner([1, 1])
    tuner.start(0)
    assert not tuner.active and not tuner.comparing
    for step in range(50):
        tuner.after_step(step, 1.0 + step)
    assert tuner.choices == []


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
@pytest.mark.parametrize(
    "precision", [None, pytest.param(torch.bfloat16, marks=needs_cpu_bf16)], ids=["float32", "bf16"]
)
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
        assert first["reason"] == "start" and first["step"] <= 6 and set(first["step_ms"]) == {"1", "2"}
        assert setup["threads_per_process"] == 1  # the comparison starts with one thread
        assert f"train: {first['threads']} threads (start; step time 1:" in result.stderr
    else:
        assert setup["threads_per_process"] == 1 and "thread_choices" not in setup
