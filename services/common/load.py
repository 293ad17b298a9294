"""How much of the machine's CPU has lately gone unused.

For work that pays only on a core that would otherwise sit idle. The figure is an average
over the last half second or more, from the kernel's idle time (psutil's cpu_times): a count
of the threads runnable at one instant caught detect's own short-lived threads (gRPC's event
engine, a decode worker going back to wait) at more than half the moments it was read.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import psutil


class _Sample(NamedTuple):
    at: float  # time.monotonic()
    idle: float  # seconds all cores have been idle, summed
    total: float  # seconds all cores have existed, summed


def _cpu_sample() -> _Sample:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    # Linux counts a guest's time in user and nice as well.
    counted_twice = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return _Sample(time.monotonic(), idle, sum(times) - counted_twice)


class IdleCores:
    """Cores idle on average since a reading at least `window` seconds old (or the oldest
    reading there is); None at the first reading, or when the kernel's counters have not moved
    (they tick every 10 ms).

    The figure is the whole machine's: in a container it includes the host's other
    processes, and it does not see a CPU quota (docker's --cpus)."""

    def __init__(
        self,
        window: float = 0.5,
        sample: Callable[[], _Sample] = _cpu_sample,
        cores: int | None = None,
    ) -> None:
        self.window = window
        self._sample = sample
        self._cores = cores or psutil.cpu_count() or 1
        self._readings: deque[_Sample] = deque()

    def __call__(self) -> float | None:
        now = self._sample()
        readings = self._readings
        # Keep one reading at least `window` old, and those since.
        while len(readings) >= 2 and now.at - readings[1].at >= self.window:
            readings.popleft()
        readings.append(now)
        oldest = readings[0]
        elapsed = now.total - oldest.total
        if elapsed <= 0:
            return None
        return self._cores * (now.idle - oldest.idle) / elapsed
