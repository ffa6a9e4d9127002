"""Helpers shared by the benchmarks: options, timing, load from other processes, machine
info, Markdown tables."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent          # the repository
DATA_DIR = Path(__file__).resolve().parent / ".data"   # generated inputs, reused between runs


@dataclass(frozen=True)
class Options:
    """What the runner passes to every benchmark's ``run``."""

    quick: bool = False            # small sizes: checks that the benchmark works, not a figure
    rows: int | None = None        # override the benchmark's default size (--rows / MLOPS_BENCH_ROWS)
    repeats: int = 3               # timed repeats; results report the median


# --------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Wall-clock seconds of repeated runs, their results, and the load beside each."""

    seconds: list[float] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    foreign: list[float] = field(default_factory=list)    # ForeignLoad.share of each run

    def add(self, fn: Callable[[], Any]) -> Any:
        """Time one call of ``fn`` (and how busy other processes kept the CPUs meanwhile)."""
        load = ForeignLoad()
        dt, result = timed(fn)
        share = load.share
        self.seconds.append(dt)
        self.results.append(result)
        if share is not None:
            self.foreign.append(share)
            self._measured(load)
        return result

    def _measured(self, load: "ForeignLoad") -> None:
        """Hook for subclasses that keep more of a run's load (e.g. CPU seconds)."""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)

    @property
    def last(self) -> Any:
        return self.results[-1] if self.results else None


def timed(fn: Callable[..., Any], *args, **kwargs) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


def repeat(fn: Callable[[], Any], n: int, *, setup: Callable[[], None] | None = None) -> Timing:
    """Call ``fn`` ``n`` times (``setup`` before each call, untimed); keep times and results."""
    out = Timing()
    for _ in range(n):
        if setup is not None:
            setup()
        out.add(fn)
    return out


# --------------------------------------------------------------------------- other processes
class ForeignLoad:
    """How busy *other* processes kept the CPUs from construction to the first ``share``.

    All-CPU busy time from /proc/stat minus the CPU time of this process and its
    descendants (Ray's GCS, raylet and workers, with their exited children), which a
    background thread samples every ``interval_s``. On a shared machine anything above
    ~0.1 skews the timings. Linux only; ``share`` is None elsewhere.
    """

    def __init__(self, interval_s: float = 0.5):
        self._t, self._busy = time.perf_counter(), _busy_seconds()
        self._share: float | None = None
        self._cpu: dict[tuple[int, int], list[float]] = {}   # (pid, start time) -> [baseline, last]
        self._stop = threading.Event()
        self._thread = None
        if self._busy is not None:
            self._sample(first=True)
            self._thread = threading.Thread(target=self._loop, args=(interval_s,), daemon=True)
            self._thread.start()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        procs = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        todo = [os.getpid()]
        while todo:
            pid = todo.pop()
            if pid in procs:
                _, start, cpu = procs[pid]
                # processes that exist at the start count from there, later ones from zero
                self._cpu.setdefault((pid, start), [cpu if first else 0.0, cpu])[1] = cpu
            todo += children.get(pid, [])

    @property
    def share(self) -> float | None:
        """Share of all CPUs (0..1) used by other processes; stops measuring on first use."""
        if self._thread is None:
            return self._share
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._sample()
        wall = time.perf_counter() - self._t
        own = sum(last - base for base, last in self._cpu.values())
        foreign = (_busy_seconds() - self._busy) - own
        self._share = round(min(1.0, max(0.0, foreign / (wall * (os.cpu_count() or 1)))), 3)
        return self._share


def wait_for_quiet(max_wait_s: float, *, threshold: float = 0.1, window_s: float = 3.0) -> float | None:
    """Wait (up to ``max_wait_s``) until other processes use under ``threshold`` of the CPUs
    over ``window_s``; return the last share seen (None where /proc/stat is missing)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b = _busy_seconds()
        if b is None:
            return None
        time.sleep(window_s)
        share = (_busy_seconds() - b) / (window_s * (os.cpu_count() or 1))
        if share < threshold or time.monotonic() >= deadline:
            return round(share, 3)


def _busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")   # all but idle and iowait


def _proc_table() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, start time, CPU seconds) of every process.

    The CPU time includes that of the process's exited (reaped) children, so short-lived
    Ray workers and actors count for the raylet that reaped them."""
    out = {}
    tck = os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue   # exited meanwhile
        fields = stat[stat.rfind(")") + 2:].split()
        cpu = sum(int(x) for x in fields[11:15])   # user + system, own and of reaped children
        out[int(name)] = (int(fields[1]), int(fields[19]), cpu / tck)
    return out


# --------------------------------------------------------------------------- machine
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """CPU count, memory and library versions, recorded with every result file."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "mem_total_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        **{name: _version(name) for name in ("ray", "pandas", "pyarrow", "numpy", "mlops-ray")},
    }


def machine_line(info: dict) -> str:
    return (f"{info['cpus_usable']} CPUs, {info['mem_total_gib']} GiB RAM, Python {info['python']}, "
            f"ray {info['ray']}, pandas {info['pandas']}, pyarrow {info['pyarrow']}, numpy {info['numpy']}")


# --------------------------------------------------------------------------- tables
def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:   # NaN
            return ""
        if abs(v) >= 1e5:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v).replace("|", "\\|")


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows as a Markdown table; columns default to every key, in first-seen order."""
    if not rows:
        return "(no rows)\n"
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if _is_text(rows, c) else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _is_text(rows: list[dict], column: str) -> bool:
    return any(isinstance(r.get(column), str) for r in rows)
