"""Spare cores, read from the threads runnable now."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from services.common.load import spare_cores


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def test_the_runnable_threads_are_read_from_loadavg(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.52 0.58 0.59 3/467 12345\n")
    assert spare_cores(loadavg) == _cores() - 3
    loadavg.write_text("garbled\n")
    assert spare_cores(loadavg) is None
    assert spare_cores(tmp_path / "absent") is None


def test_cores_kept_busy_leave_none_spare() -> None:
    """A busy loop on every core, and this process reading: more threads runnable than
    cores, at every reading."""
    before = spare_cores()
    assert before is not None and before <= _cores() - 1  # this process runs as it reads
    spin = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(_cores())]
    try:
        time.sleep(0.5)
        readings = [spare_cores() for _ in range(50)]
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert all(r is not None and r <= -1 for r in readings), readings
