"""Training faults and precision: non-finite losses, bf16 on CPU, fp16 without a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.config import load_config
from pipeline.library.buffer import WindowBuffer
from pipeline.library.errors import DataError
from pipeline.library.model import ModelSpec, build_model
from pipeline.stages.train import make_accelerator, train_step

from .conftest import cli_in_process, needs_cpu_bf16, write_config

pytestmark = pytest.mark.slow


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    config = write_config(tmp_path, {"train.checkpoint_every": 1, "train.warmup_steps": 0, "export.onnx": False})
    assert cli_in_process("run", "--config", str(config), "train.max_steps=5").returncode == 0
    # an absurd learning rate after a good checkpoint: the loss overflows within a few steps
    result = cli_in_process(
        "train", "--config", str(config), "train.max_steps=40", "train.lr=1e30", "train.resume=never"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: train:") and "train.skip_nonfinite=true" in line
    failed_at = int(line.split(" at step ")[1].split(";")[0])
    assert failed_at > 1
    assert "Traceback" not in result.stderr
    # the finished earlier model is untouched, and the failed run's last good checkpoint is kept
    assert json.loads((tmp_path / "run/train/meta.json").read_text())["state"]["step"] == 5
    assert (tmp_path / f"run/.train.work/checkpoints/step_{failed_at - 1}/model.safetensors").is_file()
    assert not (tmp_path / f"run/.train.work/checkpoints/step_{failed_at}").exists()  # the verdict came first


def test_a_late_verdict_names_the_bad_step_and_is_read_before_anything_keeps_weights():
    """The loop's check reads each step's values a step late (no GPU stall); a bad step still stops training,
    named as itself, at the next step or at `settle` (which validation, checkpoints and the record call)."""
    from pipeline.library.step_check import StepCheck

    class One:
        num_processes, scaler = 1, None

    check = StepCheck(One())
    check.defer(torch.tensor([1.0, 0.5, 2.0]), step=0)
    check.defer(torch.tensor([0.0, float("nan"), 2.0]), step=1)  # bad, not yet read
    with pytest.raises(DataError, match="loss became nan at step 2; training stopped"):
        check.defer(torch.tensor([1.0, 0.4, 2.0]), step=2)
    check.settle()  # what was pending after the raise is step 2's, which was fine
    check.defer(torch.tensor([1.0, 0.4, float("inf")]), step=3)
    with pytest.raises(DataError, match="gradient norm became inf at step 4"):
        check.settle()
    check.settle()  # nothing pending: nothing read twice


@pytest.mark.parametrize("skip", [True, False])
def test_a_batch_with_nan_is_skipped_or_stops_training(skip):
    """The real train_step on a buffer with one NaN: that batch is skipped (weights untouched) or fails."""
    cfg = load_config(None, [f"train.skip_nonfinite={str(skip).lower()}", "train.batch_size=4"])
    accelerator = make_accelerator(cfg)
    values = torch.arange(200, dtype=torch.float32).sin()
    values[50] = float("nan")
    buffer = WindowBuffer(values, torch.tensor([0]), lookback=10, horizon=5)
    model = build_model(ModelSpec(1, 5, 8, 1), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model, optimizer = accelerator.prepare(model, optimizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = [torch.tensor([[0, 40], [0, 100], [0, 120], [0, 140]])]  # window 40..54 reads the NaN
    good = [torch.tensor([[0, 0], [0, 100], [0, 120], [0, 140]])]
    if not skip:
        with pytest.raises(DataError, match="loss became nan at step 8; training stopped"):
            train_step(accelerator, model, optimizer, buffer, bad, cfg, step=7)
        return
    _, _, skipped = train_step(accelerator, model, optimizer, buffer, bad, cfg, step=7)
    assert skipped
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    loss, _, skipped = train_step(accelerator, model, optimizer, buffer, good, cfg, step=8)
    assert not skipped and torch.isfinite(loss)
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@needs_cpu_bf16
def test_bf16_on_cpu_trains_and_is_recorded(tmp_path):
    config = write_config(tmp_path, {"train.mixed_precision": "bf16", "export.onnx": False})
    result = cli_in_process("run", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((tmp_path / "run/train/meta.json").read_text())
    assert meta["setup"]["precision"] == "bf16"
    losses = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "run/train/metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert losses[-1] < 0.9 * losses[0]
    val = [
        r["val_loss"]
        for r in map(json.loads, (tmp_path / "run/train/metrics.jsonl").read_text().splitlines())
        if "val_loss" in r
    ]
    assert min(val[1:]) < val[0]  # training beat the untrained model (the seasonal base) on validation
    assert "precision bf16" in result.stderr


def test_fp16_without_a_gpu_is_a_config_error(tmp_path):
    config = write_config(tmp_path)
    for stage in ("ingest", "window"):
        assert cli_in_process(stage, "--config", str(config)).returncode == 0
    result = cli_in_process("train", "--config", str(config), "train.mixed_precision=fp16")
    assert result.returncode == 2
    assert "train.mixed_precision: fp16 needs a GPU" in result.stderr
