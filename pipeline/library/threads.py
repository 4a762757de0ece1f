"""`train.num_threads: auto`: the CPU thread count that trains fastest now, re-chosen when the machine changes.

Measured on the 2-core development machines (DESIGN.md, bench/README.md): which count is faster
depends on the machine and on what else runs on it. Two threads can double the step on a quiet
machine and halve it, or worse, as soon as another process competes for a core, because every
parallel region of the LSTM waits for the thread the scheduler took away. So the choice is made
from the training steps themselves: a few steps are timed at each candidate (one thread, and the
cores this process may use), the fastest is kept, and the comparison is made again when the step
time jumps (the median of the last steps more than twice the one after the last choice) or when a
recheck is due (to go back up once a competitor has gone; the interval doubles each time a
recheck confirms the choice).

Timing real steps costs nothing beyond the slower candidate's few steps. Switching is safe only
where the thread count changes no bits of what is computed, which holds for some shapes and not for
others (on the 2-core VMs: batch 256 with a 64 x 2 LSTM, yes; batch 32 or a 16 x 1 LSTM, no). So
`same_bits` first computes three real training steps and a validation forward on copies at each
candidate (one step is not enough: the first step's gradients can agree and the second's not): where
they differ, the fastest there is kept for the whole run (and a resume keeps it), so that the run
stays bit-for-bit resumable.
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
    """Keeps `torch.set_num_threads` at the candidate whose training steps are fastest now."""

    def __init__(
        self,
        candidates: list[int],
        trials: int = 3,
        window: int = 5,
        jump: float = 2.0,
        recheck_every: int = 200,
        longest_recheck: int = 3200,
    ) -> None:
        self.candidates = sorted(set(candidates), reverse=True)
        self.trials, self.jump = trials, jump
        self.base_recheck, self.longest_recheck = recheck_every, longest_recheck
        self.recheck_every = recheck_every
        self.recent: deque[float] = deque(maxlen=window)
        self.reference: float | None = None  # the median step time after the last choice
        self.since = 0
        self.plan: list[int] = []  # candidates still to time in the comparison under way
        self.times: dict[int, list[float]] = {}
        self.reason = ""
        self.choices: list[dict] = []  # every comparison: step, threads kept, why, each candidate's step time

    @property
    def active(self) -> bool:
        return len(self.candidates) > 1

    @property
    def comparing(self) -> bool:
        return bool(self.plan)

    def start(self, step: int) -> None:
        """Begin the first comparison (the largest count, today's choice on an idle machine, timed last)."""
        if self.active:
            torch.set_num_threads(self.candidates[0])
            self._compare(step, "start")

    def after_step(self, step: int, seconds: float) -> None:
        """Account one training step's time; compare again on a jump or when a recheck is due."""
        if not self.active:
            return
        if self.plan:
            self._time_candidate(step, seconds)
            return
        self.since += 1
        self.recent.append(seconds)
        if len(self.recent) < self.recent.maxlen:
            return
        median = statistics.median(self.recent)
        if self.reference is None:
            self.reference = median
        elif median > self.jump * self.reference:
            self._compare(step, f"step time rose from {1000 * self.reference:.0f} to {1000 * median:.0f} ms")
        elif self.since >= self.recheck_every:
            self._compare(step, f"recheck after {self.since} steps")

    def _compare(self, step: int, reason: str) -> None:
        # the other counts first, the current one last: when it is the slow one, it is cut short
        current = torch.get_num_threads()
        self.plan = [*(n for n in self.candidates if n != current), current]
        self.times = {n: [] for n in self.plan}
        self.reason = reason
        torch.set_num_threads(self.plan[0])

    def _time_candidate(self, step: int, seconds: float) -> None:
        n = self.plan[0]
        self.times[n].append(seconds)
        done = [statistics.median(t) for t in self.times.values() if len(t) >= self.trials]
        clearly_slower = done and seconds > 3 * min(done)  # no need for more of its slow steps
        if len(self.times[n]) < self.trials and not clearly_slower:
            return
        self.plan.pop(0)
        if self.plan:
            torch.set_num_threads(self.plan[0])
            return
        self._keep_fastest(step)

    def _keep_fastest(self, step: int) -> None:
        medians = {n: statistics.median(t) for n, t in self.times.items() if t}
        best = min(medians, key=lambda n: (medians[n], -n))
        previous = self.choices[-1]["threads"] if self.choices else None
        torch.set_num_threads(best)
        self.recheck_every = (
            min(2 * self.recheck_every, self.longest_recheck) if best == previous else self.base_recheck
        )
        self.recent.clear()
        self.reference, self.since = None, 0
        step_ms = {str(n): round(1000 * t, 1) for n, t in sorted(medians.items())}
        self.choices.append({"step": step, "threads": best, "reason": self.reason, "step_ms": step_ms})
        if best != previous:
            timings = ", ".join(f"{n}: {ms} ms" for n, ms in step_ms.items())
            log.info("train: %d threads (%s; step time %s)", best, self.reason, timings)


def same_bits(compute: Callable[[], list[torch.Tensor]], counts: list[int], repeats: int = 1) -> tuple[bool, dict]:
    """Whether `compute` gives the same bits at every thread count in `counts`, and its median seconds at each."""
    before = torch.get_num_threads()
    results, seconds = {}, {}
    try:
        torch.set_num_threads(counts[0])
        compute()  # untimed: the first call pays for allocations and kernel set-up, which would slow counts[0]
        for n in counts:
            torch.set_num_threads(n)
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                results[n] = compute()
                runs.append(time.perf_counter() - start)
            seconds[n] = statistics.median(runs)
    finally:
        torch.set_num_threads(before)
    first = results[counts[0]]
    same = all(len(r) == len(first) and all(torch.equal(a, b) for a, b in zip(r, first)) for r in results.values())
    return same, seconds
