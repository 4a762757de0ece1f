"""The GPU code paths that can be checked without a GPU (tests/test_gpu.py runs the rest where CUDA is there).

A checkpoint written on CUDA is imitated by re-tagging a CPU one's storages as `cuda:0` (what torch.save
records for a tensor on the first GPU); the training device by the `meta` device, with the host buffer's
pinned copies made plain copies (pinning needs a GPU).
"""

from __future__ import annotations

import contextlib
import datetime
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.library import checkpoint as ckpt
from pipeline.library import runtime
from pipeline.library.buffer import WindowBuffer
from pipeline.library.losses import loss_function
from pipeline.library.records import TrainState
from pipeline.stages import train
from pipeline.stages.train import make_accelerator

from .conftest import series_table


def _as_if_saved_on_cuda(path: Path) -> None:
    """Rewrite a torch.save file so that every storage is tagged `cuda:0`, as a file written from the first GPU."""
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    pickle_name = next(name for name in members if name.endswith("/data.pkl"))
    cpu, cuda = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"  # the location string, pickle protocol 2
    assert cpu in members[pickle_name]
    members[pickle_name] = members[pickle_name].replace(cpu, cuda)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _accelerated_adamw():
    accelerator = make_accelerator(load_config(None, ["train.mixed_precision=no"]))
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA is what this test is about")
def test_a_checkpoint_written_on_a_gpu_resumes_on_a_machine_without_one(tmp_path):
    """optimizer.pt holds the AdamW moments where training ran: read without map_location on a machine without
    CUDA, torch refuses it, every such checkpoint was taken for a broken one, and `train.resume: auto` removed the
    work directory and started over (on a multi-GPU node each rank also loaded rank 0's moments onto GPU 0)."""
    accelerator, model, optimizer = _accelerated_adamw()
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    path = ckpt.save_checkpoint(tmp_path, TrainState(step=7), accelerator, model, optimizer, {"key": "k"}, 2)
    moments = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    _as_if_saved_on_cuda(path / "optimizer.pt")

    assert ckpt.latest_valid(tmp_path) == path
    accelerator2, model2, optimizer2 = _accelerated_adamw()
    state = ckpt.load_checkpoint(path, accelerator2, model2, optimizer2)
    assert state.step == 7
    restored = optimizer2.state_dict()["state"][0]
    for key in ("exp_avg", "exp_avg_sq"):
        assert restored[key].device.type == "cpu" and torch.equal(restored[key], moments[key])


class _Accelerator:
    """What the loop asks of Accelerate, for one process; `reduce` stands for NCCL's all-reduce, which takes
    only tensors on the process's GPU: it records the device of what it is given."""

    process_index, num_processes, scaler, sync_gradients = 0, 1, None, True

    def __init__(self) -> None:
        self.reduced: list[torch.device] = []

    def unwrap_model(self, model):
        return model

    def accumulate(self, model):
        return contextlib.nullcontext()

    def backward(self, loss) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm):
        return torch.zeros(())

    def reduce(self, tensor, reduction):
        self.reduced.append(tensor.device)
        return torch.ones(tensor.shape, dtype=tensor.dtype)


class _LastSteps(torch.nn.Module):
    """A stand-in network (the recurrent model asks autocast about its device, which `meta` is not)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x[:, -HORIZON:, :1])[..., 0]


class _NoOptimizer:
    def step(self) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


HORIZON = 12


def _host_buffer_for(device: str, monkeypatch) -> WindowBuffer:
    """`train.device_resident=false`: the values stay in host memory, batches come out on `device`."""
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)  # pinning needs a GPU
    t = np.arange(2000)
    raw = np.sin(2 * np.pi * t / 12).astype(np.float32)
    buffer = WindowBuffer.from_ingest(raw, series_table([{"length": 2000}]), 48, HORIZON, device, resident="false")
    assert buffer.values.device.type == "cpu" and buffer.device.type == device
    return buffer


def test_with_the_buffer_on_the_host_validation_sums_on_the_training_device(monkeypatch):
    """The sums validation all-reduces were made on the buffer's device (the host), not the training device:
    on a GPU with `train.device_resident=false` (or a buffer over half the GPU's free memory under auto), adding
    a GPU loss into a host tensor fails at the first validation, and NCCL takes no host tensor."""
    buffer = _host_buffer_for("meta", monkeypatch)
    accelerator = _Accelerator()
    pairs = torch.stack([torch.zeros(20, dtype=torch.long), torch.arange(20) * 7], dim=1)
    loss = loss_function("mae", [])
    train.validation_loss(accelerator, _LastSteps().to("meta"), buffer, pairs, 8, loss)
    assert accelerator.reduced == [torch.device("meta")]


def test_with_the_buffer_on_the_host_a_step_sums_its_loss_on_the_training_device(monkeypatch):
    """The same for a training step's loss, which the step reporter all-reduces every `train.log_every` steps."""
    buffer = _host_buffer_for("meta", monkeypatch)
    monkeypatch.setattr(train, "step_is_bad", lambda *args: False)  # a meta tensor has no value
    cfg = load_config(None, ["train.loss=mae", "window.lookback=48", f"window.horizon={HORIZON}"])
    micro = [torch.stack([torch.zeros(8, dtype=torch.long), torch.arange(8) * 7], dim=1)]
    model = _LastSteps().to("meta")
    loss, _, _ = train.train_step(_Accelerator(), model, _NoOptimizer(), buffer, micro, cfg, 0)
    assert loss.device == torch.device("meta")


def test_on_a_gpu_every_step_seeds_the_gpu_generator_from_the_step_alone(monkeypatch):
    """cuDNN's recurrent dropout keeps its random state outside the generator a checkpoint restores; seeding the
    generator before each step makes PyTorch re-create that state from (seed, rank, step), so a resumed step
    draws the masks the unbroken run drew (tests/test_gpu.py checks the masks themselves on a GPU)."""
    seeds: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed", seeds.append)
    monkeypatch.setattr(train, "train_step", lambda *a, **k: (torch.zeros(()), torch.zeros(()), False))
    cfg = load_config(None, ["train.batch_size=64", "train.max_steps=10"])
    pairs = torch.stack([torch.zeros(256, dtype=torch.long), torch.arange(256)], dim=1)

    def steps(rank: int, state: TrainState, n: int) -> list[int]:
        accelerator = SimpleNamespace(device=torch.device("cuda"), process_index=rank, num_processes=2)
        session = SimpleNamespace(
            cfg=cfg, accelerator=accelerator, optimizer=torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))]),
            data=SimpleNamespace(pairs={"train": pairs}, buffer=None), model=None, loss=None, threads=None, check=None,
        )  # fmt: skip
        seeds.clear()
        for _ in range(n):
            train.optimizer_step(session, state)
        return list(seeds)

    unbroken = steps(0, TrainState(), 3)
    assert len(set(unbroken)) == 3
    resumed = TrainState()
    train.advance(resumed, len(pairs) // 64)
    assert steps(0, resumed, 2) == unbroken[1:]
    assert steps(1, TrainState(), 3) != unbroken  # each rank its own masks, as with set_seed(device_specific=True)


@pytest.fixture
def fresh_process_state():
    """Accelerate's process state made anew, before and after (one made earlier may be on a GPU)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.usefixtures("fresh_process_state")
def test_a_cpu_run_on_a_machine_with_gpus_leaves_their_random_state_alone(tmp_path, monkeypatch):
    """A checkpoint read and wrote the GPU generator wherever CUDA was there, also for a run on the CPU
    (`ACCELERATE_USE_CPU`, `accelerate launch --cpu`): every rank then opened a CUDA context on GPU 0."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    accelerator, model, optimizer = _accelerated_adamw()
    assert accelerator.device.type == "cpu"
    touched: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda *a, **k: touched.append("get") or torch.zeros(16, dtype=torch.uint8)
    )
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a, **k: touched.append("set"))
    path = ckpt.save_checkpoint(tmp_path, TrainState(step=3), accelerator, model, optimizer, {"key": "k"}, 2)
    ckpt.load_checkpoint(path, accelerator, model, optimizer)
    assert touched == []


def test_under_a_launcher_the_processes_wait_for_the_main_one_as_long_on_gpus_as_on_cpus(monkeypatch):
    """NCCL's default timeout is 10 minutes (gloo's 30): the ranks waiting at a barrier while the main process
    ingests were aborted by NCCL's watchdog after 10 minutes on GPUs."""
    import accelerate

    made: list[dict] = []
    monkeypatch.setattr(accelerate, "PartialState", lambda **kwargs: made.append(kwargs))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    runtime.dist_state()
    assert made == [{"cpu": False, "timeout": datetime.timedelta(minutes=30)}]
