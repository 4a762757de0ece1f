"""`train.num_threads: auto`: the CPU thread count that trains fastest now, re-chosen when the machine changes.

Measured on the 2-core development machines (DESIGN.md): two threads beat one by about 10% on
a quiet machine, and are many times slower as soon as another process competes for a core,
because every parallel region of the LSTM waits for the thread the scheduler took away. No
fixed choice is right for both, so the candidates (one thread, and the cores this process may
use) are timed on the real model and a real batch at the start, and again when the step time
jumps (the median of the last steps more than twice the one measured after the last choice) or
every `recheck_every` steps (to go back up once the competitor has gone).

The timing runs forward passes without gradients in eval mode: no optimizer state and no random
number is touched, so the training trajectory does not depend on when or what was chosen. The
thread count itself changes no bits of the CPU kernels used here (tests/test_threads.py checks
it on the machine it runs on); set `train.num_threads` to a number where it would.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable

import torch

log = logging.getLogger("pipeline")


class ThreadTuner:
    """Keeps `torch.set_num_threads` at the fastest of `candidates`; `probe()` runs one timed unit of work."""

    def __init__(
        self,
        candidates: list[int],
        probe: Callable[[], None],
        recheck_every: int = 200,
        window: int = 5,
        trials: int = 3,
        jump: float = 2.0,
    ) -> None:
        self.candidates = sorted(set(candidates))
        self.probe, self.recheck_every, self.trials, self.jump = probe, recheck_every, trials, jump
        self.recent: deque[float] = deque(maxlen=window)
        self.reference: float | None = None  # the median step time right after the last choice
        self.steps_since = 0
        self.choices: list[dict] = []  # every choice: step, threads, the probe's seconds per candidate

    @property
    def active(self) -> bool:
        return len(self.candidates) > 1

    def choose(self, step: int, reason: str) -> int:
        """Time every candidate, keep the fastest; returns the thread count now set."""
        seconds = {n: self._time(n) for n in self.candidates}
        best = min(seconds, key=lambda n: (seconds[n], -n))
        torch.set_num_threads(best)
        self.recent.clear()
        self.reference, self.steps_since = None, 0
        changed = not self.choices or self.choices[-1]["threads"] != best
        self.choices.append({"step": step, "threads": best, "reason": reason, "probe_ms": _ms(seconds)})
        if changed:
            timings = ", ".join(f"{n}: {1000 * t:.1f} ms" for n, t in seconds.items())
            log.info("train: %d threads (%s; probe %s)", best, reason, timings)
        return best

    def after_step(self, step: int, seconds: float) -> None:
        """Watch the step time; re-choose on a jump or when a recheck is due."""
        if not self.active:
            return
        self.steps_since += 1
        self.recent.append(seconds)
        if len(self.recent) < self.recent.maxlen:
            return
        median = statistics.median(self.recent)
        if self.reference is None:
            self.reference = median
        elif median > self.jump * self.reference:
            self.choose(step, f"step time rose from {1000 * self.reference:.0f} to {1000 * median:.0f} ms")
            return
        if self.steps_since >= self.recheck_every:
            self.choose(step, f"recheck after {self.steps_since} steps")

    def _time(self, threads: int) -> float:
        torch.set_num_threads(threads)
        self.probe()  # warm-up: the pool's threads start, caches fill
        times = []
        for _ in range(self.trials):
            start = time.perf_counter()
            self.probe()
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def _ms(seconds: dict[int, float]) -> dict[str, float]:
    return {str(n): round(1000 * t, 2) for n, t in seconds.items()}
