"""Helpers shared by the benchmarks: options, timing, machine info, Markdown tables."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent      # the repository
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
    """Wall-clock seconds of repeated runs."""

    seconds: list[float] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)

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
        dt, result = timed(fn)
        out.seconds.append(dt)
        out.results.append(result)
    return out


def median_of(values: list[float]) -> float:
    return statistics.median(values)


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
