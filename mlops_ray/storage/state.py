"""Serving state: which versions serve, with what weights, and where a rollout stands.

One JSON document in the store (``{store}/{name}/serving/state.json``, any pyarrow filesystem),
written atomically, with a revision that writers compare and swap.
It is the single source of truth: replicas poll it and route by it, ``mlops-ray status``
prints it, and a restarted rollout controller resumes from it. Nothing here talks to Ray.

Phases (docs/architecture.md, State machines)::

    STABLE(v1) -> CANARY(v1, v2, w) for w in steps -> PROMOTED(v2) | ROLLED_BACK(v1)
    STABLE(v1) -> SHADOW(v1, v2)                    -> STABLE(v1)   (compare only)
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field

from pyarrow import fs as pafs

from mlops_ray.storage.fs import filesystem_for
from mlops_ray.errors import ServingError
from mlops_ray.storage import procs
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.store import write_atomic

PHASES = ("STABLE", "CANARY", "SHADOW", "PROMOTED", "ROLLED_BACK")


@dataclass
class ServingState:
    name: str                              # registered model name
    stable: str                            # version answering by default
    phase: str = "STABLE"
    canary: str | None = None              # candidate version under rollout (CANARY or SHADOW)
    weight: float = 0.0                    # percent of traffic to the canary
    step: int = -1                         # index into rollout.steps
    step_started: float = 0.0
    baseline: dict = field(default_factory=dict)    # stats snapshot at the start of the step
    reference: dict | None = None          # stable's stats in the previous step (compared at 100 %)
    previous: str | None = None            # last stable, kept loaded for fast rollback
    previous_until: float = 0.0
    reason: str | None = None              # why the last rollout ended as it did
    controller: str | None = None          # id of the controller driving the rollout
    revision: int = 0
    updated: float = 0.0
    history: list = field(default_factory=list)

    # ---- routing view used by replicas
    def versions(self, now: float | None = None) -> list[str]:
        """Versions a replica must hold: stable, canary (while any phase uses it), previous (until it retires)."""
        now = time.time() if now is None else now
        out = [self.stable]
        if self.canary and self.phase in ("CANARY", "SHADOW"):
            out.append(self.canary)
        if self.previous and now < self.previous_until and self.previous not in out:
            out.append(self.previous)
        return out

    @property
    def shadow(self) -> bool:
        return self.phase == "SHADOW"

    def event(self, what: str, **info) -> None:
        self.history.append({"t": round(time.time(), 3), "event": what, **info})
        del self.history[:-200]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ServingState":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def serving_dir(store_root: str, name: str) -> str:
    return Catalog(store_root, name).serving_dir()


def state_path(store_root: str, name: str) -> str:
    return Catalog(store_root, name).serving_state()


def stats_dir(store_root: str, name: str) -> str:
    return Catalog(store_root, name).replica_stats_dir()


def spool_dir(store_root: str, name: str) -> str:
    return Catalog(store_root, name).spool_dir()


class StateConflict(ServingError):
    """The state changed since it was read: someone else wrote it (compare-and-swap failed)."""


def read_state(path: str) -> ServingState | None:
    fs, p = filesystem_for(path)
    try:
        with fs.open_input_stream(p) as f:
            return ServingState.from_dict(json.loads(f.read()))
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _locked(fs, p: str):
    """An exclusive lock around read-compare-write. Local disk and NFS: ``lockf`` on a lock file
    beside the state. Object stores have no lock; see write_state."""
    if not isinstance(fs, pafs.LocalFileSystem):
        yield
        return
    os.makedirs(os.path.dirname(p), exist_ok=True)
    fd = os.open(p + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                     # closing releases the lock


def write_state(path: str, state: ServingState, *, expect: int | None = None) -> ServingState:
    """Write the state, bumping its revision; readers never see half a document (atomic rename
    locally, a single PUT on object stores). With ``expect``, a compare-and-swap: the write happens
    only if the stored revision is still ``expect`` (0 = no state yet), else StateConflict and
    nothing is written. On local disk and NFS the compare and the write hold a lock, so two
    controllers cannot both win. On object stores (no conditional PUT through pyarrow) the compare
    and the write are one round trip apart: a second writer inside that window is not excluded."""
    fs, p = filesystem_for(path)
    with _locked(fs, p):
        if expect is not None:
            current = read_state(path)
            have = current.revision if current is not None else 0
            if have != expect:
                raise StateConflict(
                    f"the serving state of {state.name!r} changed (revision {have}, expected {expect}"
                    + (f": now {describe(current)}" if current else ": it was removed") + "); someone "
                    "promoted, rolled back or deployed meanwhile. Nothing was written; check "
                    "`mlops-ray status CONFIG` and retry")
        state.revision += 1
        state.updated = time.time()
        write_atomic(fs, p, json.dumps(state.to_dict(), indent=1).encode())
    return state


def remove_state(path: str) -> None:
    fs, p = filesystem_for(path)
    try:
        fs.delete_file(p)
    except FileNotFoundError:
        pass


def describe(state: ServingState | None) -> str:
    if state is None:
        return "nothing deployed"
    if state.phase == "CANARY":
        return f"CANARY stable v{state.stable} / canary v{state.canary} at {state.weight:g}%"
    if state.phase == "SHADOW":
        return f"SHADOW stable v{state.stable} answers; v{state.canary} mirrored"
    if state.phase in ("PROMOTED", "ROLLED_BACK"):
        return f"{state.phase} stable v{state.stable}" + (f" ({state.reason})" if state.reason else "")
    return f"STABLE v{state.stable}"


# --------------------------------------------------------------------------- the serving head's record
def head_file(store: str, name: str) -> str:
    return Catalog(store, name).head_record()


def read_head(store: str, name: str) -> dict | None:
    """The record of the local serving head of ``name``, or None when there is none or its process
    is gone (or its pid now belongs to another process)."""
    try:
        with open(head_file(store, name)) as f:
            head = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    return head if procs.alive(head.get("pid"), head.get("pid_started")) else None
