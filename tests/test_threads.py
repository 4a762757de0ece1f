"""`train.num_threads: auto`: the tuner keeps the faster thread count and follows a competing process, where the
counts compute the same bits; where they do not, one count is kept for the whole run and a resume keeps it."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
import torch

from pipeline.library.model import ModelSpec, build_model
from pipeline.library.runtime import available_cores
from pipeline.library.threads import ThreadTuner, same_bits
from pipeline.stages import train as train_stage

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
    """On this shape the counts agree to the bit here, so `auto` may switch between them mid-run (where a run's
    own shapes do not agree, `same_bits` finds it and the count stays put: the tests below)."""
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
    kept = tmp_path / "run/train" / train_stage.PINNED_THREADS  # the work directory became train/
    if available_cores() >= 2 and kept.is_file():  # the probe found the counts' bits differ: no switching
        count = int(kept.read_text())
        assert setup["threads_per_process"] == count and "thread_choices" not in setup and setup["threads_kept"]
        assert f"train: {count} threads for the whole run" in result.stderr
    elif available_cores() >= 2:
        first = setup["thread_choices"][0]
        assert first["reason"] == "start" and first["step"] <= 6 and set(first["step_ms"]) == {"1", "2"}
        assert setup["threads_per_process"] == 1  # the comparison starts with one thread
        assert f"train: {first['threads']} threads (start; step time 1:" in result.stderr
    else:
        assert setup["threads_per_process"] == 1 and "thread_choices" not in setup


def test_same_bits_compares_every_count_and_times_each(restore_threads):
    counted = lambda: [torch.tensor([float(torch.get_num_threads())])]  # noqa: E731
    constant = lambda: [torch.ones(3)]  # noqa: E731
    same, seconds = same_bits(constant, [1, 2])
    assert same and set(seconds) == {1, 2} and all(s >= 0 for s in seconds.values())
    before = torch.get_num_threads()
    assert same_bits(counted, [1, 2])[0] is False
    assert torch.get_num_threads() == before  # the caller's count is put back


CPU = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, num_processes=1)


def _auto(tmp_path, **train):
    return SimpleNamespace(train=SimpleNamespace(num_threads="auto", **train))


def test_counts_that_compute_other_bits_are_not_switched_and_a_resume_keeps_the_count(
    tmp_path, monkeypatch, restore_threads
):
    monkeypatch.setattr(train_stage, "choose_threads", lambda setting: 2)

    def slow_two() -> list[torch.Tensor]:  # two threads compute other bits, and more slowly
        extra = [torch.ones(400_000).cumsum(0) for _ in range(torch.get_num_threads() - 1)]
        return [torch.tensor([float(torch.get_num_threads())]), *extra]

    tuner = train_stage.thread_tuner(_auto(tmp_path), CPU, tmp_path, lambda: slow_two, 0)
    assert tuner is None and torch.get_num_threads() == 1  # one thread was faster on the probe: kept
    assert (tmp_path / train_stage.PINNED_THREADS).read_text() == "1\n"
    (tmp_path / train_stage.PINNED_THREADS).write_text("2\n")  # as an interrupted run chose it

    def never() -> None:
        raise AssertionError("a resumed run keeps the count it started with, without probing")

    assert train_stage.thread_tuner(_auto(tmp_path), CPU, tmp_path, never, 40) is None
    assert torch.get_num_threads() == 2


def test_counts_that_compute_the_same_bits_are_timed_and_switched(tmp_path, monkeypatch, restore_threads):
    monkeypatch.setattr(train_stage, "choose_threads", lambda setting: 2)
    tuner = train_stage.thread_tuner(_auto(tmp_path), CPU, tmp_path, lambda: lambda: [torch.ones(3)], 0)
    assert isinstance(tuner, ThreadTuner) and tuner.active and tuner.comparing
    assert not (tmp_path / train_stage.PINNED_THREADS).exists()


@pytest.mark.slow
@pytest.mark.skipif(available_cores() < 2, reason="needs two cores to compare one thread with two")
def test_auto_threads_on_a_small_batch_resume_bit_for_bit(tmp_path):
    """Batch 32 with a 16 x 1 LSTM: 1 and 2 threads differ in the last bits from the second step on (measured on
    the 2-core VMs). A run under `auto`, killed and resumed, ends as a run at the count it kept, bit for bit."""
    from .test_resume import assert_bitwise_equal, kill_at_step, prepared

    small = {"train.batch_size": 32, "train.max_steps": 120, "train.num_threads": "auto", "train.eval_every": 20}
    config = prepared(tmp_path / "auto", **small)
    kill_at_step(config, 1, 60)
    kept = tmp_path / "auto/run/.train.work" / train_stage.PINNED_THREADS
    count = int(kept.read_text()) if kept.is_file() else None
    result = cli("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stderr
    if count is None:  # this machine's kernels agree on these shapes: any count gives the same bits
        count = 1
    else:
        assert f"train: {count} threads for the whole run" in result.stderr
    fixed = prepared(tmp_path / "fixed", **{**small, "train.num_threads": count})
    assert cli("train", "--config", str(fixed)).returncode == 0
    assert_bitwise_equal(tmp_path / "auto/run", tmp_path / "fixed/run")
