"""Process set-up shared by every CLI run and every DDP process: allocator, denormals, threads.

Measured on the 2-core development machines (see DESIGN.md): glibc returning large blocks to
the system after every step nearly halves LSTM throughput, denormal floats make long-lookback
batches about 8x slower, and oversubscribed threads under DDP are many times slower.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("pipeline")

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> bool:
    """Tell glibc to keep freed large blocks instead of unmapping them after every step."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc maximum on 64-bit
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024 * 1024)
    ok &= libc.mallopt(_M_TOP_PAD, 64 * 1024 * 1024)
    return bool(ok)


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def choose_threads(requested: int = 0) -> int:
    """Cores divided among the processes of this node, unless the config says otherwise."""
    if requested > 0:
        return requested
    return max(1, available_cores() // max(1, local_world_size()))


def configure_process(num_threads: int = 0) -> dict[str, object]:
    """Apply the process-wide settings once; returns what was chosen, for the log."""
    import torch

    malloc = tune_malloc()
    torch.set_flush_denormal(True)
    threads = choose_threads(num_threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return {"threads": threads, "malloc_tuned": malloc, "flush_denormal": True}


def setup_logging(main_process: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if main_process else logging.WARNING)
    log.propagate = False


class SingleProcess:
    """The process state of a plain one-process run, without importing torch or Accelerate.

    Ingest and window (and bad-input errors) then start in a fraction of the time and memory.
    """

    is_main_process = True
    process_index = 0
    num_processes = 1

    def wait_for_everyone(self) -> None:
        pass


_LAUNCHER_SIZES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def dist_state():
    """Accelerate's process state (initialises torch.distributed under torchrun/accelerate).

    The first call fixes the state for the whole process, so it must already know about CPU
    DDP: `ACCELERATE_USE_CPU=true`, or several processes on a machine without a GPU, means
    gloo over CPU processes (otherwise each process would silently train alone).
    """
    several = any(int(os.environ.get(name, "1")) > 1 for name in _LAUNCHER_SIZES)
    if not several:
        return SingleProcess()
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (several and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def main_process_only(work) -> None:
    """Run `work()` on the main process while the others wait: one writer per stage directory."""
    state = dist_state()
    if state.is_main_process:
        work()
    state.wait_for_everyone()
