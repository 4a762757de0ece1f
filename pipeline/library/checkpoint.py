"""Resumable checkpoints: written to a temporary directory, then renamed (never half-written).

`step_N/` holds the model (safetensors), the optimizer (and grad scaler) state loaded with
`weights_only=True`, each rank's RNG state, and `train_state.json` (step, epoch, position in
the epoch's batch order, best validation loss, and the key of the config and data it belongs
to). The batch order is a pure function of (seed, epoch), so nothing about the sampler needs
to be stored.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.library.errors import UserError
from pipeline.library.records import TrainState

log = logging.getLogger("pipeline")

STATE_FILE = "train_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def unwrapped_state(accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # keep_fp32_wrapper=False would strip Accelerate's autocast wrapper off the live model for the rest of the run
    module = accelerator.unwrap_model(model)
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """A state dict as safetensors, written beside `path` and renamed over it (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)


def save_checkpoint(
    root: Path, state: TrainState, accelerator, model, optimizer, identity: dict[str, Any], keep_last: int
) -> Path:
    """Every rank calls this; the main process writes the shared files and commits by rename."""
    final = root / f"step_{state.step}"
    tmp = root / f".tmp_step_{state.step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng = {"cpu": torch.get_rng_state()}
    if accelerator.device.type == "cuda":  # this rank's GPU; a CPU run on a GPU machine leaves the GPUs alone
        rng["cuda"] = torch.cuda.get_rng_state(accelerator.device)
    save_file(rng, str(tmp / f"rng_rank{accelerator.process_index}.safetensors"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_file(unwrapped_state(accelerator, model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        payload = {**asdict(state), **identity, "world_size": accelerator.num_processes}
        (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2))
        _pause_for_tests(state.step)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _prune(root, keep_last)
    accelerator.wait_for_everyone()
    return final


def _pause_for_tests(step: int) -> None:
    """Test hook: PIPELINE_TEST_PAUSE=checkpoint:<step>:<seconds> sleeps inside that save.

    It touches PIPELINE_TEST_PAUSE_FLAG first, so a test knows the moment to kill the run.
    """
    point, _, rest = os.environ.get("PIPELINE_TEST_PAUSE", "").partition(":")
    at, _, seconds = rest.partition(":")
    if point == "checkpoint" and at == str(step) and seconds:
        import time

        flag = os.environ.get("PIPELINE_TEST_PAUSE_FLAG")
        if flag:
            Path(flag).touch()
        time.sleep(float(seconds))


def _prune(root: Path, keep_last: int) -> None:
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    """Committed checkpoints, oldest first (temporary directories are ignored)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


def _load_pt(path: Path):
    """A torch.save file of tensors, onto the CPU whatever device wrote it (the optimizer and scaler load their
    state onto their own devices): a checkpoint of a GPU run resumes on a machine without one, and the ranks of a
    multi-GPU node do not all read rank 0's moments onto GPU 0."""
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_valid(root: Path) -> Path | None:
    """Newest checkpoint that reads back whole; broken ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            read_state(path)
            load_file(str(path / "model.safetensors"))
            _load_pt(path / "optimizer.pt")
            return path
        except Exception as exc:  # truncated, corrupt or missing files
            log.warning("checkpoint %s is unreadable (%s); falling back to an older one", path, str(exc)[:120])
    return None


def load_checkpoint(path: Path, accelerator, model, optimizer) -> TrainState:
    """Restore model, optimizer, scaler and this rank's RNG; returns the saved TrainState."""
    saved = read_state(path)
    module = accelerator.unwrap_model(model)
    module.load_state_dict(load_file(str(path / "model.safetensors")))
    optimizer.load_state_dict(_load_pt(path / "optimizer.pt"))
    if accelerator.scaler is not None and (path / "scaler.pt").exists():
        accelerator.scaler.load_state_dict(_load_pt(path / "scaler.pt"))
    rng_file = path / f"rng_rank{accelerator.process_index}.safetensors"
    if rng_file.exists():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and accelerator.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], accelerator.device)
    else:
        log.warning("checkpoint %s has no RNG state for rank %d", path, accelerator.process_index)
    return TrainState.from_json(saved)


def has_identity(path: Path, identity: dict[str, Any]) -> bool:
    """Whether the checkpoint at `path` was made for this run (its settings, data and starting weights)."""
    saved = read_state(path)
    return all(saved.get(key) == value for key, value in identity.items())


def check_identity(path: Path, identity: dict[str, Any]) -> None:
    saved = read_state(path)
    for key, value in identity.items():
        if saved.get(key) != value:
            raise UserError(
                f"train: checkpoint {path} was made with a different {key.replace('_', ' ')} "
                f"({saved.get(key)} != {value}); set train.resume=never to start over"
            )
