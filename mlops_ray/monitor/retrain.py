"""The retrain policy, the decision log and the loop's lock.

``should_retrain(report, live, policy, history, champion_metric, now) -> Decision`` is a pure
function (like ``evaluate.decide``): a drift report, the live metric, the policy (``retrain:``)
and the decisions so far in; whether to retrain and every reason out. Decisions are appended
to ``{store}/{name}/monitor/decisions.jsonl``; ``mlops_ray/loop.py`` does the side effects.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field

from mlops_ray.config import Config, RetrainConfig, parse_duration
from mlops_ray.errors import MonitorError
from mlops_ray.storage import procs
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.store import Store


@dataclass
class Decision:
    trigger: bool
    reasons: list = field(default_factory=list)      # what fired
    blocked: str | None = None                        # why a trigger did not start a retrain
    checked: list = field(default_factory=list)       # what was looked at and did not fire

    def to_dict(self) -> dict:
        return asdict(self)


def should_retrain(report: dict | None, live: dict | None, policy: RetrainConfig, history: list[dict],
                   champion_metric: float | None, now: float, higher_is_better: bool = True) -> Decision:
    """Every trigger is checked and named; a cool-down since the last retrain blocks them."""
    d = Decision(trigger=False)
    if report:
        share = report.get("drift_share", 0.0)
        (d.reasons if share >= policy.drift_share else d.checked).append(
            f"drift share {share:.0%} (trigger at {policy.drift_share:.0%})")
        feats = {f["name"]: f for f in report.get("features", [])}
        for name in policy.key_features:
            f = feats.get(name)
            if f is None:
                d.checked.append(f"key feature {name}: not in the report")
                continue
            psi = (f.get("tests") or {}).get("psi")
            if f.get("verdict") == "drift":
                d.reasons.append(f"key feature {name} drifted ({f.get('statistic')} {f.get('value'):.3g})")
            elif psi is not None and psi > policy.key_feature_psi:
                d.reasons.append(f"key feature {name} PSI {psi:.3f} > {policy.key_feature_psi:g}")
            else:
                d.checked.append(f"key feature {name}: {f.get('verdict')}")
        mv = report.get("multivariate") or {}
        if policy.multivariate and mv.get("auc") is not None:
            (d.reasons if mv.get("drifted") else d.checked).append(
                f"domain classifier AUC {mv['auc']:.3f} (drift above {mv['threshold']:.3f})")
    if live and live.get("value") is not None and champion_metric is not None:
        if live.get("labelled", 0) < policy.min_labels:
            d.checked.append(f"live {live.get('metric')}: {live.get('labelled', 0)} labelled predictions "
                             f"(needs {policy.min_labels})")
        else:
            drop = (champion_metric - live["value"]) * (1 if higher_is_better else -1)
            (d.reasons if drop >= policy.metric_drop else d.checked).append(
                f"live {live.get('metric')} {live['value']:.4f} vs {champion_metric:.4f} at registration "
                f"(drop {drop:+.4f}, trigger at {policy.metric_drop:g})")
    retrains = [h for h in history if h.get("action") == "retrain"]
    last = max((h["t"] for h in retrains), default=None)
    if policy.schedule and (last is None or now - last >= parse_duration(policy.schedule)):
        d.reasons.append(f"schedule: no retrain in the last {policy.schedule}")
    d.trigger = bool(d.reasons)
    if d.trigger and last is not None and now - last < parse_duration(policy.cooldown):
        until = dt.datetime.fromtimestamp(last + parse_duration(policy.cooldown), dt.timezone.utc)
        d.trigger, d.blocked = False, f"cool-down ({policy.cooldown}) until {until:%Y-%m-%d %H:%M} UTC"
    if d.trigger and not policy.enabled:
        d.trigger, d.blocked = False, "retrain.enabled is false"
    return d


# --------------------------------------------------------------------------- decision log + lock
def _dir(cfg: Config) -> str:
    return Catalog(cfg.store, cfg.name).monitor_dir()


def read_decisions(cfg: Config) -> list[dict]:
    store = Store(cfg.store)
    path = Catalog(store, cfg.name).decisions()
    if not store.exists(path):
        return []
    with store.fs.open_input_stream(path) as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def record(cfg: Config, entry: dict) -> None:
    """Append one decision (object stores have no append: the log is rewritten, it stays small)."""
    store = Store(cfg.store)
    path = Catalog(store, cfg.name).decisions()
    lines = [json.dumps(e, default=str) for e in read_decisions(cfg)] + [json.dumps(entry, default=str)]
    store.fs.create_dir(Catalog(store, cfg.name).monitor_dir(), recursive=True)
    with store.fs.open_output_stream(path) as f:
        f.write(("\n".join(lines) + "\n").encode())


class LoopLock:
    """One loop per pipeline: a lock file naming host and pid; a dead holder's lock is taken over."""

    def __init__(self, cfg: Config):
        self.store = Store(cfg.store)
        self.path = Catalog(self.store, cfg.name).loop_lock()
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                   "pid_started": procs.started(os.getpid())}

    def __enter__(self):
        if self.store.exists(self.path):
            held = self.store.read_json(self.path)
            if held.get("host") != self.me["host"] or procs.alive(held.get("pid"), held.get("pid_started")):
                raise MonitorError(f"a loop already runs for this pipeline (pid {held.get('pid')} on "
                                   f"{held.get('host')}); stop it first (kill -TERM {held.get('pid')}), or delete "
                                   f"{self.path} if that host is gone")
        self.store.write_json(self.path, self.me)
        return self

    def __exit__(self, *exc):
        try:
            if self.store.exists(self.path) and self.store.read_json(self.path).get("pid") == self.me["pid"]:
                self.store.fs.delete_file(self.path)
        except OSError:
            pass
        return False
