"""The GPU path, on a GPU: skipped without CUDA (here they must still import and be collected).

bench/gpu_check.sh runs them (`pytest -m gpu`) whenever a GPU machine is lent.
"""

from __future__ import annotations

import socket
import warnings

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.library import checkpoint as ckpt
from pipeline.library.buffer import WindowBuffer
from pipeline.library.errors import ConfigError
from pipeline.library.losses import loss_function
from pipeline.library.model import ModelSpec, build_model
from pipeline.library.onnx_export import export_onnx
from pipeline.library.records import TrainState
from pipeline.library.runtime import cuda_autocast_rnn_dtype
from pipeline.library.schedule import local_batches
from pipeline.library.step_check import StepCheck
from pipeline.stages.train import make_accelerator, seed_cuda_step, train_step, validation_loss

from .conftest import series_table

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs these)"),
]

LOOKBACK, HORIZON = 48, 12
SPEC = ModelSpec(1, HORIZON, 32, 2, instance_norm=True, residual_season=12, season_average=2)


def _cfg(precision: str, **train):
    overrides = [f"train.mixed_precision={precision}", "train.batch_size=64", "train.loss=mae"]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None, [*overrides, f"window.lookback={LOOKBACK}", f"window.horizon={HORIZON}"])


def _buffer(device: str, resident: str = "auto") -> WindowBuffer:
    t = np.arange(4000)
    raw = (np.sin(2 * np.pi * t / 12) + 0.001 * t + np.random.default_rng(0).normal(0, 0.1, t.size)).astype(np.float32)
    return WindowBuffer.from_ingest(raw, series_table([{"length": 4000}]), LOOKBACK, HORIZON, device, resident)


def _pairs(buffer: WindowBuffer, n: int = 64) -> torch.Tensor:
    starts = torch.arange(n, device=buffer.values.device) * 7
    return torch.stack([torch.zeros_like(starts), starts], dim=1)


def _prepared(precision: str, **train):
    cfg = _cfg(precision, **train)
    accelerator = make_accelerator(cfg)
    model = build_model(SPEC, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    return cfg, accelerator, model, optimizer


def test_the_buffer_lives_on_the_gpu_and_a_gather_copies_nothing_from_the_host():
    buffer = _buffer("cuda")
    assert buffer.values.device.type == "cuda" and buffer.offsets.device.type == "cuda"
    pairs = _pairs(buffer)
    buffer.gather(pairs)  # warm-up: kernels load
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        x, y = buffer.gather(pairs)
        torch.cuda.synchronize()
    copies = [e.name for e in prof.events() if "memcpy" in e.name.lower() and "htod" in e.name.lower()]
    assert copies == [], copies
    assert x.device.type == y.device.type == "cuda" and x.shape == (64, LOOKBACK, 1)


def test_a_buffer_kept_on_the_host_still_hands_out_gpu_batches():
    buffer = _buffer("cuda", resident="false")
    assert buffer.values.device.type == "cpu" and buffer.values.is_pinned()
    x, y = buffer.gather(_pairs(buffer))
    assert x.device.type == y.device.type == "cuda"


def test_calendar_channels_across_summer_time_on_the_gpu_equal_the_cpus():
    """The zone's offset changes live beside the resident buffer; the lookup (searchsorted on int64) runs there, and
    copies nothing from the host."""
    from pipeline.library.calendar import Calendar

    records = [{"start": "2024-03-20T00:00:00", "length": 2000}, {"start": "2024-10-01T00:00:00", "length": 1500}]
    raw = np.zeros(3500, np.float32)
    cal = Calendar(("day", "week"), "h", "Europe/Berlin")
    cpu = WindowBuffer.from_ingest(raw, series_table(records), LOOKBACK, HORIZON, "cpu", calendar=cal)
    gpu = WindowBuffer.from_ingest(raw, series_table(records), LOOKBACK, HORIZON, "cuda", calendar=cal)
    assert gpu.offset_changes is not None and gpu.offset_changes.bounds.device.type == "cuda"
    pairs = torch.tensor([[0, 230], [1, 600], [0, 1500], [1, 10]])
    x_cpu, _ = cpu.gather(pairs)
    gpu.gather(pairs.cuda())  # warm-up: kernels load
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        x_gpu, _ = gpu.gather(pairs.cuda())
        torch.cuda.synchronize()
    assert [e.name for e in prof.events() if "memcpy" in e.name.lower() and "htod" in e.name.lower()] == []
    torch.testing.assert_close(x_gpu.cpu(), x_cpu, rtol=0, atol=1e-6)


def test_a_buffer_kept_on_the_host_trains_and_validates_on_the_gpu():
    """train.device_resident=false: the step's loss and validation's sums live on the GPU (tests/test_gpu_paths)."""
    cfg, accelerator, model, optimizer = _prepared("no")
    buffer = _buffer("cuda", resident="false")
    micro = local_batches(_pairs(buffer), 64, 1, cfg.seed, TrainState(), 0, 1)
    loss, _, skipped = train_step(accelerator, model, optimizer, buffer, micro, cfg, 0)
    assert loss.device.type == "cuda" and torch.isfinite(loss) and not skipped
    val = validation_loss(accelerator, model, buffer, _pairs(buffer), 16, loss_function("mae", []))
    assert 0 < val < float("inf")


def test_recurrent_dropout_masks_repeat_after_a_resume():
    """cuDNN's LSTM dropout state is not in the RNG state a checkpoint keeps; seeding per step re-creates it."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 16, num_layers=2, dropout=0.5, batch_first=True).cuda().train()
    x = torch.randn(32, 20, 4, device="cuda")
    torch.cuda.manual_seed(0)
    outputs, saved = [], None
    for step in range(3):
        if step == 2:
            saved = torch.cuda.get_rng_state()  # what a checkpoint after step 2 holds
        seed_cuda_step(0, 0, step)
        outputs.append(lstm(x)[0].detach())
    assert not torch.equal(outputs[1], outputs[2])  # dropout is on: each step its own masks
    torch.cuda.set_rng_state(saved)  # the resume: the generator restored, cuDNN's own dropout state not
    seed_cuda_step(0, 0, 2)
    assert torch.equal(lstm(x)[0].detach(), outputs[2])


def _lstm_dtypes_of_a_step(precision: str) -> list[torch.dtype]:
    cfg, accelerator, model, optimizer = _prepared(precision)
    seen = []
    hook = accelerator.unwrap_model(model).rnn.register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    buffer = _buffer("cuda")
    micro = local_batches(_pairs(buffer), 64, 1, cfg.seed, TrainState(), 0, 1)
    loss, _, skipped = train_step(accelerator, model, optimizer, buffer, micro, cfg, 0)
    hook.remove()
    assert torch.isfinite(loss) and not skipped
    assert next(accelerator.unwrap_model(model).parameters()).dtype == torch.float32  # float32 master weights
    return seen


def test_a_training_step_in_the_loop_waits_for_nothing_on_the_gpu():
    """The loop's step reads its non-finite verdict a step late (library/step_check.py): no step holds the host
    until the GPU has caught up, so the GPU never idles while the next step's kernels are launched."""
    cfg, accelerator, model, optimizer = _prepared("no")
    buffer, state = _buffer("cuda"), TrainState()
    check = StepCheck(accelerator)

    def step() -> None:
        micro = local_batches(_pairs(buffer), 64, 1, cfg.seed, state, 0, 1)
        train_step(accelerator, model, optimizer, buffer, micro, cfg, state.step, check=check)
        state.step += 1

    step()  # the first step allocates the optimizer's state
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(3):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # torch warns "called a synchronizing CUDA operation" at each one it detects (its notice that the mode is
    # a prototype is not one)
    assert [str(w.message) for w in caught if "synchronizing cuda operation" in str(w.message).lower()] == []
    check.settle()


def test_fp16_autocast_runs_the_lstm_in_float16():
    assert _lstm_dtypes_of_a_step("fp16") == [torch.float16]


def test_bf16_runs_the_lstm_in_bf16_or_is_refused_before_training():
    """torch 2.11's autocast ran cuDNN's LSTM in float16 under bf16 (an H200, 2026-11-29), without gradient
    scaling: the demo lost 10% test MASE. Where the probe finds that, bf16 is a config error; where a torch
    runs the LSTM in bf16, it trains in bf16."""
    if cuda_autocast_rnn_dtype() != "bfloat16":
        with pytest.raises(ConfigError, match="bf16 would train the LSTM in float16 on this GPU"):
            make_accelerator(_cfg("bf16"))
        return
    assert _lstm_dtypes_of_a_step("bf16") == [torch.bfloat16]


def test_auto_trains_in_float32_on_the_gpu():
    assert make_accelerator(_cfg("auto")).mixed_precision == "no"


def test_fp16_the_scaler_steps_and_skips_a_step_with_inf_gradients():
    cfg, accelerator, model, optimizer = _prepared("fp16")
    assert accelerator.scaler is not None
    buffer = _buffer("cuda")
    micro = local_batches(_pairs(buffer), 64, 1, cfg.seed, TrainState(), 0, 1)
    train_step(accelerator, model, optimizer, buffer, micro, cfg, 0)
    scale = accelerator.scaler.get_scale()
    module = accelerator.unwrap_model(model)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    hook = module.head.bias.register_hook(lambda grad: grad * float("inf"))
    _, _, skipped = train_step(accelerator, model, optimizer, buffer, micro, cfg, 1)
    hook.remove()
    assert skipped  # the scaler skipped the step: no error, the weights unchanged, the scale lowered
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert accelerator.scaler.get_scale() < scale
    _, _, skipped = train_step(accelerator, model, optimizer, buffer, micro, cfg, 2)
    assert not skipped


def test_the_scaler_state_goes_through_a_checkpoint(tmp_path):
    cfg, accelerator, model, optimizer = _prepared("fp16")
    buffer = _buffer("cuda")
    micro = local_batches(_pairs(buffer), 64, 1, cfg.seed, TrainState(), 0, 1)
    train_step(accelerator, model, optimizer, buffer, micro, cfg, 0)
    accelerator.scaler.update(1234.0)
    path = ckpt.save_checkpoint(tmp_path, TrainState(step=1), accelerator, model, optimizer, {"key": "k"}, 2)
    assert (path / "scaler.pt").is_file()
    _, accelerator2, model2, optimizer2 = _prepared("fp16")
    ckpt.load_checkpoint(path, accelerator2, model2, optimizer2)
    assert accelerator2.scaler.get_scale() == 1234.0


def test_a_gpu_trained_model_exports_to_onnx_with_parity_on_the_cpu(tmp_path):
    cfg, accelerator, model, optimizer = _prepared("fp16")
    buffer = _buffer("cuda")
    for step in range(5):
        micro = local_batches(_pairs(buffer), 64, 1, cfg.seed, TrainState(batch_in_epoch=0), 0, 1)
        train_step(accelerator, model, optimizer, buffer, micro, cfg, step)
    cpu_model = build_model(SPEC)
    cpu_model.load_state_dict(ckpt.unwrapped_state(accelerator, model))
    cpu_buffer = _buffer("cpu")
    pairs = _pairs(cpu_buffer).numpy()
    parity = export_onnx(cpu_model.eval(), cpu_buffer, pairs, tmp_path / "model.onnx", 1e-4)
    assert parity <= 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_of_world_size_one_on_cuda_through_accelerate(monkeypatch):
    """What `torchrun --nproc_per_node 1` or `accelerate launch --multi_gpu` sets up: NCCL, and a training step
    of a DDP-wrapped model with its collectives (Accelerate wraps from two processes on; with one GPU here the
    wrap is made by hand, as Accelerate would)."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType
    from torch.nn.parallel import DistributedDataParallel

    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    AcceleratorState._reset_state(reset_partial_state=True)  # earlier tests' process-wide state was not distributed
    try:
        cfg, accelerator, model, optimizer = _prepared("no")
        assert accelerator.distributed_type == DistributedType.MULTI_GPU and accelerator.num_processes == 1
        assert torch.distributed.get_backend() == "nccl"
        ddp = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
        buffer = _buffer("cuda")
        micro = local_batches(_pairs(buffer), 64, 1, cfg.seed, TrainState(), 0, 1)
        loss, grad_norm, skipped = train_step(accelerator, ddp, optimizer, buffer, micro, cfg, 0)
        assert torch.isfinite(loss) and torch.isfinite(grad_norm) and not skipped
        assert accelerator.reduce(torch.ones((), device=accelerator.device), "sum").item() == 1.0  # through NCCL
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        AcceleratorState._reset_state(reset_partial_state=True)
