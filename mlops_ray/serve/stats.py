"""Per-version serving statistics: what the rollout controller compares.

Each replica keeps cumulative counters per model version (requests, errors, a latency
histogram, a prediction histogram) and writes a snapshot file every second to
``{serving}/stats/{replica}.json``. The controller sums the files and subtracts the
snapshot taken when a step began, so canary and stable are compared over the same
window. Cumulative counters make a lost write harmless (the next one carries it) and
a dead replica's last file still counts. Pure Python; no Ray.
"""
from __future__ import annotations

import bisect
import json
import posixpath
import time
from dataclasses import dataclass, field

from pyarrow import fs as pafs

from mlops_ray.storage.fs import filesystem_for
from mlops_ray.storage.store import write_atomic

# latency buckets: 0.05 ms .. ~60 s, 8 per doubling (p99 resolution about 9 %)
LATENCY_EDGES_MS = [0.05 * 2 ** (i / 8) for i in range(162)]
@dataclass
class VersionStats:
    requests: int = 0
    errors: int = 0
    rows: int = 0
    latency: list = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    predictions: list = field(default_factory=list)

    def add(self, other: "VersionStats", sign: int = 1) -> None:
        self.requests += sign * other.requests
        self.errors += sign * other.errors
        self.rows += sign * other.rows
        self.latency = [a + sign * b for a, b in zip(self.latency, other.latency)]
        if not self.predictions:
            self.predictions = [0] * len(other.predictions)
        if len(other.predictions) == len(self.predictions):
            self.predictions = [a + sign * b for a, b in zip(self.predictions, other.predictions)]

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def latency_quantile_ms(self, q: float) -> float:
        n = sum(self.latency)
        if n == 0:
            return float("nan")
        target, seen = q * n, 0
        for i, c in enumerate(self.latency):
            seen += c
            if seen >= target:
                return LATENCY_EDGES_MS[min(i, len(LATENCY_EDGES_MS) - 1)]
        return LATENCY_EDGES_MS[-1]

    def to_dict(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "rows": self.rows,
                "latency": self.latency, "predictions": self.predictions}

    @classmethod
    def from_dict(cls, d: dict) -> "VersionStats":
        return cls(requests=d["requests"], errors=d["errors"], rows=d.get("rows", 0),
                   latency=list(d["latency"]), predictions=list(d.get("predictions", [])))

    def summary(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 5),
                "p50_ms": _r(self.latency_quantile_ms(0.5)), "p99_ms": _r(self.latency_quantile_ms(0.99))}


class ReplicaStats:
    """Cumulative counters of one replica, per version. Called from the replica's event loop."""

    def __init__(self, replica: str, edges: list[float], where: dict | None = None):
        self.replica = replica
        self.where = where or {}                   # node id, node IP, pid (for `status`)
        self.edges = edges
        self.by_version: dict[str, VersionStats] = {}
        self.load_errors: dict[str, str] = {}      # version -> why this replica cannot load it

    def _get(self, version: str) -> VersionStats:
        s = self.by_version.get(version)
        if s is None:
            s = self.by_version[version] = VersionStats(predictions=[0] * (len(self.edges) + 1))
        return s

    def record(self, version: str, ok: bool, latency_s: float, predictions=()) -> None:
        s = self._get(version)
        s.requests += 1
        if not ok:
            s.errors += 1
        s.latency[bisect.bisect_left(LATENCY_EDGES_MS, latency_s * 1e3)] += 1
        for p in predictions:
            if isinstance(p, list):       # multiclass: the top class probability
                p = max(p)
            if p == p:                    # not NaN
                s.predictions[bisect.bisect_right(self.edges, p)] += 1
            s.rows += 1

    def snapshot(self) -> dict:
        return {"replica": self.replica, "edges": self.edges, "load_errors": dict(self.load_errors),
                "versions": {v: s.to_dict() for v, s in self.by_version.items()}, "where": self.where,
                "at": time.time()}


def write_snapshot(directory: str, snap: dict) -> None:
    """One small JSON per replica in the store (path or URI): atomic rename locally, one PUT on
    object stores, so the controller never reads half a snapshot."""
    fs, d = filesystem_for(directory)
    path = posixpath.join(d, f"{_safe(snap['replica'])}.json")
    write_atomic(fs, path, json.dumps(snap).encode())


def read_snapshots(directory: str) -> dict[str, dict]:
    fs, d = filesystem_for(directory)
    try:
        infos = fs.get_file_info(pafs.FileSelector(d, allow_not_found=True))
    except FileNotFoundError:
        return {}
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File and info.path.endswith(".json"):
            try:
                with fs.open_input_stream(info.path) as f:
                    snap = json.loads(f.read())
                out[snap["replica"]] = snap
            except (OSError, ValueError, KeyError):
                continue              # a file being replaced; the next read sees it
    return out


def live_replicas(snaps: dict[str, dict], within_s: float = 10.0) -> list[dict]:
    """Replicas whose snapshot is fresh (they write one a second): name, node, pid, requests served.
    A stopped or lost replica's last snapshot stays (its counts still count) but is not listed."""
    now = time.time()
    out = []
    for name, snap in sorted(snaps.items()):
        if now - snap.get("at", 0) <= within_s:
            out.append({"replica": name, **snap.get("where", {}),
                        "requests": sum(v["requests"] for v in snap["versions"].values())})
    return out


def load_errors(snaps: dict[str, dict]) -> dict[str, str]:
    """version -> "replica: error" for versions some replica could not load."""
    out: dict[str, str] = {}
    for snap in snaps.values():
        for v, e in snap.get("load_errors", {}).items():
            out.setdefault(v, f"{snap['replica']}: {e}")
    return out


def totals(snaps: dict[str, dict]) -> dict[str, VersionStats]:
    out: dict[str, VersionStats] = {}
    for snap in snaps.values():
        for v, d in snap["versions"].items():
            out.setdefault(v, VersionStats()).add(VersionStats.from_dict(d))
    return out


def window(now: dict[str, dict], base: dict[str, dict]) -> dict[str, VersionStats]:
    """Per-version stats accumulated between two sets of snapshots (``base`` may be empty)."""
    out = totals(now)
    for v, s in totals(base).items():
        if v in out:
            out[v].add(s, sign=-1)
    return out


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def _r(x: float) -> float | None:
    return None if x != x else round(x, 3)
