"""The GPU code paths that can be checked without a GPU (tests/test_gpu.py runs the rest where CUDA is there).

A checkpoint written on CUDA is imitated by re-tagging a CPU one's storages as `cuda:0` (what torch.save
records for a tensor on the first GPU); the training device by the `meta` device, with the host buffer's
pinned copies made plain copies (pinning needs a GPU).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from pipeline.config import load_config
from pipeline.library import checkpoint as ckpt
from pipeline.library.records import TrainState
from pipeline.stages.train import make_accelerator


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
    assert not torch.cuda.is_available()  # here, torch cannot place the file's tensors where it says they were

    assert ckpt.latest_valid(tmp_path) == path
    accelerator2, model2, optimizer2 = _accelerated_adamw()
    state = ckpt.load_checkpoint(path, accelerator2, model2, optimizer2)
    assert state.step == 7
    restored = optimizer2.state_dict()["state"][0]
    for key in ("exp_avg", "exp_avg_sq"):
        assert restored[key].device.type == "cpu" and torch.equal(restored[key], moments[key])
