"""A binary version's decision threshold over time: the history kept on the version, and the
re-choice on the most recent labelled data, so that the threshold follows the base rate.

A version is registered with the threshold its rule (``model.threshold``) chose on its validation
split (its bundle's ``metadata["threshold"]``): the first entry of its history. ``mlops-ray
feedback`` applies the version's own rule again to the version's labelled predictions
(``follow_base_rate``) and appends an entry; with fewer than ``monitor.min_rows`` rows, or labels of
one class only, or a target the rows cannot meet, the threshold is kept and the entry says why.
Serving replicas (within ``serve/app.THRESHOLD_POLL_S``), batch scoring, `status` and the report use
the newest value (``current``).
A retrain needs nothing of this: its new version's rule runs on the retrain window's validation split.

Storage: ``{store}/{name}/thresholds/v{version}.json`` -- ``{"version", "entries": [...]}``, the whole
history from the first re-choice on (before it, the registered threshold alone), written atomically
(readers never see half a file). An entry: ``value``, ``rule`` (the name shown), ``spec``
(the rule as the config writes it), ``rows``, ``positive_rate``, ``source`` (``validation`` |
``feedback``), ``time`` (ISO UTC; None for the registration entry), ``kept`` (the re-choice did
not change it) and ``reason``, ``metrics`` (precision, recall, f1 on those rows at the value).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import time

import numpy as np
from pyarrow import fs as pafs

from mlops_ray.errors import ConfigError, MlopsError
from mlops_ray.monitor.labels import _versions, scored_with_labels
from mlops_ray.registry import Registry
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.state import read_state, state_path
from mlops_ray.storage.store import Store, write_atomic

log = logging.getLogger(__name__)

MAX_ENTRIES = 200                # the oldest re-choices beyond this are dropped (the first entry stays)


# --------------------------------------------------------------------------- history
def history_path(store: Store, name: str, version: str) -> str:
    return Catalog(store, name).thresholds(version)


def registered(metadata: dict) -> dict | None:
    """The entry of the threshold a version was registered with (its bundle's ``metadata["threshold"]``);
    None for a version that is not binary."""
    if metadata.get("task", "binary") != "binary":
        return None
    choice = metadata.get("threshold") or {"value": 0.5, "rule": "fixed (chosen before thresholds were stored)"}
    valid = choice.get("valid") or {}
    return {"value": float(choice["value"]), "rule": choice.get("rule"), "spec": spec_of(choice),
            "rows": valid.get("n"), "positive_rate": valid.get("positive_rate"), "source": "validation",
            "time": None, "kept": False, "reason": choice.get("note"),
            "metrics": {k: valid[k] for k in ("precision", "recall", "f1") if k in valid}}


def stored(store: Store, name: str, version: str) -> list[dict]:
    """The re-choices recorded for a version, oldest first ([] when none; an unreadable file is
    logged and read as none: serving keeps the threshold it has)."""
    path = history_path(store, name, str(version))
    try:
        if not store.exists(path):
            return []
        return list(store.read_json(path).get("entries") or [])
    except (OSError, ValueError, AttributeError) as e:
        log.warning("cannot read the threshold history %s (%s); using the version's registered threshold", path, e)
        return []


def history(store: Store, name: str, version: str, metadata: dict) -> list[dict]:
    """Every threshold of a binary version, oldest first: the registered one, then the re-choices."""
    first = registered(metadata)
    return [] if first is None else (stored(store, name, version) or [first])


def current(store: Store, name: str, version: str, metadata: dict) -> float:
    """The threshold a binary version applies now: its newest entry's value."""
    h = history(store, name, version, metadata)
    return float(h[-1]["value"]) if h else 0.5


def stamp(store: Store, name: str, version: str) -> tuple | None:
    """(mtime, size) of a version's history file, None without one: a replica re-reads the history
    only when this changes (a stat, about 20 us, instead of parsing up to 200 entries, about 1 ms)."""
    info = store.fs.get_file_info(history_path(store, name, str(version)))
    return None if info.type == pafs.FileType.NotFound else (info.mtime_ns, info.size)


def append(store: Store, name: str, version: str, entry: dict, metadata: dict) -> None:
    """Add a re-choice to the version's history; the file then holds the whole history (the registered
    entry first), so that `status` reads it without the registry."""
    entries = (stored(store, name, str(version)) or [registered(metadata)]) + [entry]
    if len(entries) > MAX_ENTRIES:
        entries = [entries[0], *entries[-(MAX_ENTRIES - 1):]]
    path = history_path(store, name, str(version))
    store.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    write_atomic(store.fs, path, json.dumps({"version": str(version), "entries": entries}, indent=1,
                                            default=_json_default).encode())


def spec_of(choice: dict | None, fallback=None):
    """The rule of a stored choice as the config writes it: its ``spec``, or (versions registered before
    the spec was stored) read back from its name, else ``fallback``."""
    if not choice:
        return fallback
    if "spec" in choice:
        return choice["spec"]
    rule = str(choice.get("rule") or "")
    if rule == "fixed":
        return float(choice["value"])
    if rule == "max_f1":
        return "max_f1"
    m = re.fullmatch(r"(min_precision|min_recall|top_rate) ([0-9.eE+-]+)", rule)
    return {m.group(1): float(m.group(2))} if m else fallback


# --------------------------------------------------------------------------- the re-choice (pure)
def rechoose(p: np.ndarray, y: np.ndarray, spec, current_value: float, min_rows: int, *,
             source: str = "feedback", now: float | None = None) -> dict:
    """A history entry: the threshold ``spec`` picks on scores ``p`` with labels ``y`` (NaN: not
    labelled yet), or ``current_value`` kept with the reason. A rule with labels uses the labelled
    rows; ``top_rate`` needs none and uses every score (it is a share of traffic)."""
    from mlops_ray.train import evaluate as ev  # scikit-learn: not imported by serving replicas
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    name, spec = ev.threshold_rule(spec)
    top = isinstance(spec, dict) and "top_rate" in spec
    lab = np.isfinite(y)
    rows = int(p.size if top else lab.sum())
    pos = float(y[lab].mean()) if lab.any() else None
    entry = {"value": float(current_value), "rule": name, "spec": spec, "rows": rows, "positive_rate": pos,
             "source": source, "time": _iso(now), "kept": True, "reason": None, "metrics": {}}
    what = "predictions" if top else "labelled predictions"
    if name == "fixed":
        entry["reason"] = "the rule is a fixed probability; it does not follow the base rate"
    elif rows < min_rows:
        entry["reason"] = (f"{rows:,} {what}, fewer than monitor.min_rows ({min_rows:,}): the threshold is kept "
                           f"until more labels arrive")
    elif not top and len(np.unique(y[lab])) < 2:
        entry["reason"] = f"the {rows:,} {what} hold one class only ({int(y[lab][0])}): the threshold is kept"
    else:
        try:
            choice = ev.choose_threshold(None, p, spec, where=f"the {rows:,} {what}") if top else \
                ev.choose_threshold(y[lab], p[lab], spec, where=f"the {rows:,} {what}")
        except ConfigError as e:
            entry["reason"] = f"{e.message.removeprefix('model.threshold: ')}; the threshold is kept"
        else:
            entry.update(value=float(choice["value"]), kept=False)
    if lab.any():
        m = ev.metrics_at(y[lab].astype(int), p[lab], entry["value"])
        entry["metrics"] = {k: m[k] for k in ("precision", "recall", "f1", "flagged")}
    elif top and p.size:
        entry["metrics"] = {"flagged": float(np.mean(p >= entry["value"]))}
    return entry


# --------------------------------------------------------------------------- after feedback
def follow_base_rate(cfg, *, since: float | None = None, metadata_of=None, now: float | None = None) -> dict:
    """Re-choose the threshold of each served binary version (stable and canary of the serving state;
    without one, every version in the prediction log) on its labelled predictions logged since
    ``since`` (default: all of them), append the entry to its history and return
    ``{version: entry}`` (each with ``previous``). ``metadata_of(version)`` gives a version's bundle
    metadata (default: the registry)."""

    if cfg.model.task != "binary":
        return {}
    store = Store(cfg.store)
    if metadata_of is None:
        registry = Registry(cfg.registry, cfg.store, cfg.name)
        metadata_of = lambda v: registry.load_bundle(v).metadata        # noqa: E731
    state = read_state(state_path(cfg.store, cfg.name))
    versions = [str(v) for v in state.versions()] if state else _versions(store, cfg)
    out = {}
    for v in sorted(set(versions), key=lambda s: (len(s), s)):
        try:
            meta = metadata_of(v)
        except MlopsError as e:     # the labels are stored; only this version's threshold stays as it is
            out[v] = {"value": None, "previous": None, "kept": True, "rule": None, "rows": 0,
                      "reason": f"its registered threshold cannot be read ({e.message})"}
            continue
        before = current(store, cfg.name, v, meta)
        p, y = scored_with_labels(Catalog(store, cfg.name).predlog_dir(), Catalog(store, cfg.name).labels_dir(), cfg.data.label,
                                  v, since)
        spec = spec_of(meta.get("threshold"), cfg.model.threshold)
        entry = rechoose(p, y, spec, before, cfg.monitor.min_rows, now=now)
        if entry["rule"] != "fixed":            # a fixed probability never moves: nothing to record
            append(store, cfg.name, v, entry, meta)
        out[v] = {**entry, "previous": before}
    return out


def recorded(cfg, versions) -> dict:
    """``{version: history}`` of the versions whose threshold was re-chosen at least once, read from the
    store alone (no registry), for `status`; a version not listed applies its registered threshold."""
    store = Store(cfg.store)
    return {str(v): h for v in versions if (h := stored(store, cfg.name, str(v)))}


def describe(entry: dict) -> str:
    """One line for an entry: value, rule, rows, positive rate, source, time, and why it was kept."""
    rows = f"{entry['rows']:,} rows" if entry.get("rows") is not None else "rows unknown"
    pos = f", {entry['positive_rate']:.1%} positive" if entry.get("positive_rate") is not None else ""
    when = (entry.get("time") or "")[:19].replace("T", " ") or "at registration"
    line = f"{entry['value']:.4f} ({entry.get('rule')}; {entry.get('source')} {when}, {rows}{pos})"
    if entry.get("kept") and entry.get("reason"):
        line += f" kept: {entry['reason']}"
    return line


def _iso(now: float | None) -> str:
    return dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc).isoformat(
        timespec="seconds")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not math.isfinite(o) else float(o)
    return str(o)
