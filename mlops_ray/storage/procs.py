"""Whether the process a store record names is still running.

Records in the store name processes by pid: the local serving head (``serving/head.json``), the
rollout controller (``serving/state.json``), the loop's lock (``monitor/loop.lock``) and the
prediction-log spools. A pid alone is not enough: a pid freed by a dead process can be handed to
a new one, so a record may also carry the process's start time (``started``), and a live pid
whose start time differs is the reused pid of another process. psutil reads both portably.
"""
from __future__ import annotations

import psutil

# psutil derives a start time from the boot time and the clock-tick count: equal for one
# process on every read, to within the tick (10 ms); two processes with one pid differ by more
_SAME_START_S = 0.05


def started(pid: int) -> float | None:
    """The start time of ``pid`` (seconds since the epoch), or None when there is no such process."""
    try:
        return psutil.Process(int(pid)).create_time()
    except (psutil.Error, ValueError, TypeError):
        return None


def alive(pid, started_at: float | None = None) -> bool:
    """True when ``pid`` (on this host) runs and, if ``started_at`` is given, is the same process
    that was recorded; a zombie (exited, not reaped) is not alive. A process that cannot be
    inspected (another user's) counts as alive, so its records are left alone."""
    if not pid:
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started_at is None or abs(proc.create_time() - float(started_at)) <= _SAME_START_S
    except (psutil.NoSuchProcess, ValueError, TypeError):
        return False
    except psutil.AccessDenied:
        return True
