"""Serving state: which versions serve, with what weights, and where a rollout stands.

One JSON document in the store (``{store}/{name}/serving/state.json``), written atomically.
It is the single source of truth: replicas poll it and route by it, ``mlops-ray status``
prints it, and a restarted rollout controller resumes from it. Nothing here talks to Ray.

Phases (DESIGN.md's state machine)::

    STABLE(v1) -> CANARY(v1, v2, w) for w in steps -> PROMOTED(v2) | ROLLED_BACK(v1)
    STABLE(v1) -> SHADOW(v1, v2)                    -> STABLE(v1)   (compare only)
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field

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
    return os.path.join(store_root, name, "serving")


def state_path(store_root: str, name: str) -> str:
    return os.path.join(serving_dir(store_root, name), "state.json")


def read_state(path: str) -> ServingState | None:
    try:
        with open(path) as f:
            return ServingState.from_dict(json.load(f))
    except FileNotFoundError:
        return None


def write_state(path: str, state: ServingState) -> ServingState:
    """Atomic replace (readers never see half a file); bumps the revision."""
    state.revision += 1
    state.updated = time.time()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        json.dump(state.to_dict(), f, indent=1)
    os.replace(tmp, path)
    return state


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
