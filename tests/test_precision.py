"""Mixed precision is really applied: the recurrent kernels of a real `lstm-pipeline train` run in bf16.

The rule checked here: the training forward and backward run under autocast in the configured
precision; every forecast that is scored or served (validation, evaluate, export, predict) runs
in float32 on the float32 master weights.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.library.errors import ConfigError

from .conftest import cli_in_process, needs_cpu_bf16, run_main, write_config

pytestmark = pytest.mark.slow

FAILURE = "could not create a primitive descriptor for the LSTM forward propagation primitive"
SETTINGS = {"train.max_steps": 20, "train.eval_every": 10, "train.log_every": 5, "train.num_threads": 1}


class RecurrentKernels(TorchDispatchMode):
    """Counts the recurrent kernels (LSTM layers, forward and backward) by the dtype of their input."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if "rnn" in name or "lstm" in name:
            first = next(a for a in args if isinstance(a, torch.Tensor))
            backward = "backward" in name
            phase = "train" if backward or torch.is_grad_enabled() else "no_grad"  # backward runs without grad mode
            self.seen[(phase, backward, first.dtype)] += 1
        return func(*args, **(kwargs or {}))


def prepared(root: Path, precision: str) -> Path:
    config = write_config(root, {**SETTINGS, "train.mixed_precision": precision, "export.onnx": False})
    for stage in ("ingest", "window"):
        assert cli_in_process(stage, "--config", str(config)).returncode == 0
    return config


def losses(run: Path) -> list[float]:
    rows = map(json.loads, (run / "train/metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in rows if "loss" in r]


@needs_cpu_bf16
def test_bf16_training_runs_the_lstm_in_bf16_and_validates_in_float32(tmp_path):
    config = prepared(tmp_path / "bf16", "bf16")
    kernels = RecurrentKernels()
    with kernels:
        code, err = run_main(["train", "--config", str(config)])
    assert code == 0, err[-2000:]
    seen = kernels.seen
    forward_bf16 = seen[("train", False, torch.bfloat16)]
    backward_bf16 = seen[("train", True, torch.bfloat16)]
    assert forward_bf16 >= SETTINGS["train.max_steps"], seen  # every training step's LSTM forward
    assert backward_bf16 >= SETTINGS["train.max_steps"], seen
    assert seen[("train", False, torch.float32)] == 0, seen  # nothing trained in float32
    assert seen[("no_grad", False, torch.float32)] > 0, seen  # validation: float32
    assert seen[("no_grad", False, torch.bfloat16)] == 0, seen

    reference = prepared(tmp_path / "fp32", "no")
    assert cli_in_process("train", "--config", str(reference)).returncode == 0
    bf16, fp32 = losses(tmp_path / "bf16/run"), losses(tmp_path / "fp32/run")
    assert len(bf16) == len(fp32) == 4
    assert bf16 != fp32  # the precision changes the numbers...
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05)  # ...not what is learnt


@needs_cpu_bf16
def test_bf16_training_killed_and_resumed_ends_bit_for_bit(tmp_path):
    from .test_resume import assert_bitwise_equal, finish, kill_at_step
    from .test_resume import prepared as prepared_for_resume

    settings = {"train.mixed_precision": "bf16", "train.max_steps": 100}
    reference = prepared_for_resume(tmp_path / "reference", **settings)
    finish(reference, 1)
    config = prepared_for_resume(tmp_path / "killed", **settings)
    kill_at_step(config, 1, 60)
    stderr = finish(config, 1)
    assert "resumed from" in stderr and "precision bf16" in stderr
    assert_bitwise_equal(tmp_path / "killed/run", tmp_path / "reference/run")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx512f", "avx512_bf16"}, "bf16"),
        ({"amx_bf16", "amx_tile"}, "bf16"),
        ({"avx512f", "avx2"}, "no"),  # AVX-512 without BF16: bf16 would be emulated, slower than float32
        (set(), "no"),
    ],
)
def test_auto_is_bf16_on_cpus_that_compute_it_natively(monkeypatch, flags, expected):
    from pipeline.library import runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    monkeypatch.setattr(runtime, "cpu_bf16_lstm_fails", lambda: None)  # such a CPU runs oneDNN's bf16 LSTM
    precision, why = runtime.resolve_precision("auto", torch.device("cpu"))
    assert precision == expected and why.startswith("auto: CPU")
    for setting in ("no", "bf16"):  # a set value is taken as it is
        assert runtime.resolve_precision(setting, torch.device("cpu")) == (setting, "set in the config")


@pytest.mark.parametrize(("bf16_failure", "usable"), [(None, "bf16, auto or no"), (FAILURE, "auto or no")])
def test_fp16_on_a_cpu_is_a_config_error_naming_what_this_cpu_can_use(monkeypatch, bf16_failure, usable):
    from pipeline.library import runtime

    monkeypatch.setattr(runtime, "cpu_bf16_lstm_fails", lambda: bf16_failure)
    with pytest.raises(ConfigError) as raised:
        runtime.resolve_precision("fp16", torch.device("cpu"))
    assert str(raised.value) == (
        f"train.mixed_precision: fp16 needs a GPU (gradient scaling); use {usable} on this CPU"
    )  # fmt: skip


def test_bf16_where_the_cpus_lstm_fails_is_a_config_error_and_auto_falls_back_to_float32(monkeypatch):
    from pipeline.library import runtime
    from pipeline.library.errors import ConfigError

    monkeypatch.setattr(runtime, "cpu_bf16_lstm_fails", lambda: FAILURE)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})
    with pytest.raises(ConfigError) as raised:
        runtime.resolve_precision("bf16", torch.device("cpu"))
    assert str(raised.value) == (
        f"train.mixed_precision: bf16 cannot train the LSTM on this CPU (CPU without AVX-512 BF16 or AMX; torch: "
        f"{FAILURE}); use auto or no"
    )
    assert runtime.resolve_precision("no", torch.device("cpu")) == ("no", "set in the config")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})  # flags that promise it, a kernel that fails
    assert runtime.resolve_precision("auto", torch.device("cpu")) == (
        "no", f"auto: CPU with avx512_bf16, but its bf16 LSTM fails: {FAILURE}"
    )  # fmt: skip


def test_a_bf16_train_where_the_cpus_lstm_fails_exits_2_with_one_line_and_writes_no_train_stage(tmp_path, monkeypatch):
    from pipeline.library import runtime

    config = prepared(tmp_path, "bf16")
    monkeypatch.setattr(runtime, "cpu_bf16_lstm_fails", lambda: FAILURE)
    code, err = run_main(["train", "--config", str(config)])
    assert code == 2
    assert (
        err.strip().splitlines()[-1].startswith("error: train.mixed_precision: bf16 cannot train the LSTM on this CPU")
    )
    assert "Traceback" not in err and not (tmp_path / "run/train").exists()


def test_a_bf16_run_where_the_cpus_lstm_fails_stops_before_ingest_but_a_finished_run_still_completes(
    tmp_path, monkeypatch
):
    from pipeline.library import runtime

    config = write_config(tmp_path, {**SETTINGS, "train.max_steps": 2, "export.onnx": False})
    monkeypatch.setattr(runtime, "cpu_bf16_lstm_fails", lambda: FAILURE)
    code, err = run_main(["run", "--config", str(config), "train.mixed_precision=bf16"])
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: train.mixed_precision: bf16 cannot train")
    assert not (tmp_path / "run").exists()  # nothing ran: neither ingest nor window wrote a stage

    # A run trained where bf16 works (here in float32 under the bf16 setting) is cached: evaluate and export
    # need no bf16 LSTM, so the finished run completes on this CPU as before.
    from pipeline.stages import train

    with monkeypatch.context() as elsewhere:
        elsewhere.setattr(train, "resolve_precision", lambda setting, device: ("no", "a CPU that trains bf16"))
        assert run_main(["run", "--config", str(config), "train.mixed_precision=bf16"])[0] == 0
    trained = (tmp_path / "run/train/meta.json").stat().st_mtime_ns
    code, err = run_main(["run", "--config", str(config), "train.mixed_precision=bf16"])
    assert code == 0, err
    assert (tmp_path / "run/train/meta.json").stat().st_mtime_ns == trained


def test_the_bf16_probe_leaves_the_seeded_random_stream_alone():
    from pipeline.library.runtime import cpu_bf16_lstm_fails

    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    cpu_bf16_lstm_fails.cache_clear()
    cpu_bf16_lstm_fails()  # builds an LSTM, whose initial weights are drawn at random
    assert torch.equal(torch.rand(4), expected)


def test_auto_on_a_gpu_is_float32_and_bf16_is_refused_where_autocast_runs_the_lstm_in_float16(monkeypatch):
    """On an H200 (torch 2.11) bf16 autocast ran cuDNN's LSTM in float16 without gradient scaling: 10% worse
    test MASE than float32, and slower (bench/README.md). `auto` is float32 on any GPU; an explicit bf16 is
    refused where the probe finds float16, and taken where a torch really runs the LSTM in bf16."""
    from pipeline.library import runtime

    for dtype in ("float16", "bfloat16"):
        monkeypatch.setattr(runtime, "cuda_autocast_rnn_dtype", lambda d=dtype: d)
        precision, why = runtime.resolve_precision("auto", torch.device("cuda"))
        assert precision == "no" and why.startswith("auto: float32 on a GPU")
        assert runtime.resolve_precision("fp16", torch.device("cuda")) == ("fp16", "set in the config")
    monkeypatch.setattr(runtime, "cuda_autocast_rnn_dtype", lambda: "float16")
    with pytest.raises(ConfigError, match=r"bf16 would train the LSTM in float16 on this GPU .* use fp16"):
        runtime.resolve_precision("bf16", torch.device("cuda"))
    monkeypatch.setattr(runtime, "cuda_autocast_rnn_dtype", lambda: "bfloat16")
    assert runtime.resolve_precision("bf16", torch.device("cuda")) == ("bf16", "set in the config")


def test_auto_precision_is_resolved_logged_and_recorded_by_a_real_train(tmp_path):
    from pipeline.library.runtime import native_bf16

    config = prepared(tmp_path, "auto")
    result = cli_in_process("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    native, found = native_bf16(torch.device("cpu"))
    expected = "bf16" if native else "no"
    setup = json.loads((tmp_path / "run/train/meta.json").read_text())["setup"]
    assert (setup["precision"], setup["precision_setting"]) == (expected, "auto")
    assert f"train: precision {expected} (auto: {found})" in result.stderr
