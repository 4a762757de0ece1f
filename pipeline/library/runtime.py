"""Process set-up shared by every CLI run and every DDP process: allocator, denormals, threads.

Measured on the 2-core development machines (see DESIGN.md): glibc returning large blocks to
the system after every step nearly halves LSTM throughput, denormal floats make long-lookback
batches about 8x slower, and oversubscribed threads under DDP are many times slower.
"""

from __future__ import annotations

import ctypes
import datetime
import functools
import logging
import os
import sys

from pipeline.library.errors import ConfigError

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


def choose_threads(requested: int | str = "auto") -> int:
    """Cores divided among the processes of this node, unless the config says otherwise.

    With `auto` (or 0) this is where training starts; `pipeline.library.threads` may move it.
    """
    if isinstance(requested, int) and requested > 0:
        return requested
    return max(1, available_cores() // max(1, local_world_size()))


def configure_process(num_threads: int | str = "auto") -> dict[str, object]:
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

COLLECTIVE_TIMEOUT_MINUTES = 30
"""How long a process waits for the others at a barrier or collective before the run fails.

The main process alone ingests, windows, and finishes training (blend, calibration, the tracker's
uploads) while the others wait at a barrier. torch's default is 30 minutes for gloo but 10 for
NCCL, whose watchdog then aborts every rank: a multi-GPU run whose ingest took 11 minutes died
where the same run on CPUs went on. Both now wait as long as gloo does."""


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
    return PartialState(cpu=cpu, timeout=datetime.timedelta(minutes=COLLECTIVE_TIMEOUT_MINUTES))


def main_process_only(work) -> None:
    """Run `work()` on the main process while the others wait: one writer per stage directory."""
    state = dist_state()
    if state.is_main_process:
        work()
    state.wait_for_everyone()


def cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device) -> tuple[bool, str]:
    """Whether a CPU `device` computes bf16 natively (not emulated), and what was found, for the log (on a GPU
    `auto` is float32 whatever the GPU computes: `resolve_precision`)."""
    if device.type == "cpu":
        found = sorted({"amx_bf16", "avx512_bf16"} & cpu_flags())
        return bool(found), f"CPU with {' and '.join(found)}" if found else "CPU without AVX-512 BF16 or AMX"
    return False, f"{device.type} device"


@functools.cache
def cpu_bf16_lstm_fails() -> str | None:
    """Why an LSTM cannot train under bf16 autocast on this CPU, or None where it can.

    oneDNN has bf16 recurrent kernels only for CPUs with AVX-512: on an AVX2 CPU (the AMD EPYC
    VMs here) the first bf16 LSTM forward fails inside the kernel with "could not create a
    primitive descriptor". The flags do not say where the line lies, so one tiny LSTM step is
    tried once per process, outside the seeded random stream.
    """
    import torch

    try:
        with torch.random.fork_rng(devices=[]):
            lstm = torch.nn.LSTM(1, 2, batch_first=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = lstm(torch.zeros(1, 2, 1))
        out.float().sum().backward()
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        return lines[0].split(". ")[0]
    return None


@functools.cache
def cuda_autocast_rnn_dtype() -> str:
    """The dtype cuDNN's LSTM computes in under bf16 autocast on this process's GPU, as torch names it.

    torch's autocast casts the cuDNN recurrent kernels to float16 whatever dtype autocast was asked for
    (2.11 on an H200, bench/README.md): a bf16 run then trains its LSTM in float16 with no gradient
    scaling, and lost 10% test MASE on the demo. One tiny forward, on the GPU this rank will use, tells."""
    import torch

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count()))
    with torch.random.fork_rng(devices=[]):
        lstm = torch.nn.LSTM(1, 2, batch_first=True).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, _ = lstm(torch.zeros(1, 2, 1, device=device))
    return str(out.dtype).removeprefix("torch.")


def resolve_precision(setting: str, device) -> tuple[str, str]:
    """`train.mixed_precision` as Accelerate takes it (no|fp16|bf16), and why.

    `auto` is float32 on a GPU: at the LSTM's sizes cuDNN's float32 kernels were faster than autocast's and
    matched the CPU's accuracy, where bf16 autocast ran the LSTM in float16 without scaling
    (`cuda_autocast_rnn_dtype`; bench/README.md, H200). On a CPU `auto` is bf16 where the CPU computes it
    natively. bf16 where the LSTM would not train in it (an AVX2 CPU's oneDNN has no bf16
    LSTM; a GPU's autocast runs it in float16) is a ConfigError when set, as is fp16 on a CPU (it needs a
    GPU's gradient scaling), instead of a kernel error or a quietly worse model."""
    if setting == "fp16" and device.type == "cpu":
        usable = "auto or no" if cpu_bf16_lstm_fails() else "bf16, auto or no"
        raise ConfigError(f"train.mixed_precision: fp16 needs a GPU (gradient scaling); use {usable} on this CPU")
    if setting == "auto" and device.type == "cuda":
        return "no", "auto: float32 on a GPU, the LSTM's fastest and most accurate precision there (bench/README.md)"
    if setting == "auto":
        native, found = native_bf16(device)
        precision, why = ("bf16" if native else "no"), f"auto: {found}"
    else:
        precision, why = setting, "set in the config"
    if precision == "bf16" and device.type == "cuda" and (dtype := cuda_autocast_rnn_dtype()) != "bfloat16":
        raise ConfigError(
            f"train.mixed_precision: bf16 would train the LSTM in {dtype} on this GPU (torch's autocast runs "
            f"cuDNN's recurrent kernels in {dtype} under bf16), without gradient scaling; use fp16 (the same "
            "kernels, scaled), no or auto"
        )
    if precision == "bf16" and device.type == "cpu" and (failure := cpu_bf16_lstm_fails()) is not None:
        if setting == "bf16":
            raise ConfigError(
                f"train.mixed_precision: bf16 cannot train the LSTM on this CPU ({native_bf16(device)[1]}; torch: "
                f"{failure}); use auto or no"
            )
        return "no", f"{why}, but its bf16 LSTM fails: {failure}"
    return precision, why


def release_process_group() -> None:
    """Destroy torch.distributed's default group where this process made one (under torchrun or
    `accelerate launch`), before the interpreter tears down.

    Left to teardown, gloo's worker threads can outlive the interpreter: a rank that had finished
    its work died with "terminate called without an active exception" (SIGABRT), and torchrun
    reported the whole command as failed (seen once in the 2-process refit test on an AMD EPYC VM).
    Called only after a command succeeded: where a rank failed, another may still wait in a
    collective, and destroying the group there can hang.
    """
    torch = sys.modules.get("torch")  # a command that never imported torch made no group
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def make_deterministic() -> None:
    """Deterministic GPU kernels from here on (cuDNN without autotuning, cuBLAS with a fixed workspace).

    Must run before the first CUDA call: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it starts.
    """
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
