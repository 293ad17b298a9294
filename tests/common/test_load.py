"""Idle cores, averaged over the last half second or more of the kernel's idle time."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from services.common.load import IdleCores, _Sample


def test_idle_cores_are_averaged_over_the_window() -> None:
    """Each reading is compared with the newest one at least `window` old."""
    samples = iter(
        [
            _Sample(0.0, idle=0.0, total=0.0),
            _Sample(0.2, idle=0.4, total=0.8),  # 2 of 4 cores idle since 0.0
            _Sample(0.6, idle=0.6, total=2.4),  # 1 idle since 0.0, the window's start
            _Sample(0.9, idle=0.6, total=3.6),  # since 0.2, the newest reading 0.5 old
            _Sample(0.9, idle=0.6, total=3.6),
        ]
    )
    idle = IdleCores(window=0.5, sample=lambda: next(samples), cores=4)
    assert idle() is None  # nothing to compare with yet
    assert idle() == pytest.approx(2.0)
    assert idle() == pytest.approx(1.0)
    assert idle() == pytest.approx(0.2 / 2.8 * 4)
    assert idle() == pytest.approx(0.2 / 2.8 * 4)


def test_every_core_kept_busy_leaves_none_idle() -> None:
    """The machine's own counters: a busy loop on every core for a window leaves well under
    half a core idle."""
    cores = psutil.cpu_count() or 1
    idle = IdleCores(window=0.5)
    idle()
    spin = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(cores)]
    try:
        time.sleep(1.0)
        idle()  # the window starts with every core busy
        time.sleep(0.6)
        loaded = idle()
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert loaded is not None and loaded < 0.3, loaded
