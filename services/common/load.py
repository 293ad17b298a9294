"""How many of the machine's cores are left over, now.

For work that pays only on a core that would otherwise sit idle. Linux's /proc/loadavg counts
the threads runnable at the moment it is read (its fourth field, `running/total`), unlike the
load averages beside it, which trail by a minute. The kernel's idle time averaged over the
last half second, tried first, counted the work of the call before: at one photo at a time,
embed's two batch threads on a 22-face photo kept the next photo from its decode ahead at 17
of 32 calls (a probe, 2026-12-02).
"""

from __future__ import annotations

import os
from pathlib import Path

LOADAVG = Path("/proc/loadavg")


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def spare_cores(loadavg: Path = LOADAVG) -> int | None:
    """This process's cores less the threads runnable now, the caller's own included; None
    where the system does not say (no /proc/loadavg).

    The count is the whole machine's: in a container it includes the host's other threads,
    and it does not see a CPU quota (docker's --cpus), only a set of cores (--cpuset-cpus)."""
    try:
        running = int(loadavg.read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None
    return _cores() - running
