"""Recovering the spool of a dead writer: its records become Parquet, as its flush would have made them.

In: a spool directory (``PredictionLog``'s ``spool_dir``) and the log's root. Out: Parquet files
under the root for the spool segments of processes of this host that no longer run (the segments
are then deleted), the number of rows recovered.

A segment's writer is known by the pid in its name and, in headers written since the key exists,
its start time (``pid_started``, seconds since the epoch), so a pid reused by another process is
not taken for the writer; an older header (a ``start_time`` in clock ticks) is checked by pid alone.
Call ``recover_orphans`` when a replica starts.
"""
from __future__ import annotations

import json
import logging
import os
import re

from mlops_ray.monitor.predlog.format import (
    CLAIM, SPOOL_RE, check_input_types, filesystem_for, group_by_hour, hostname, part_name, read_spool)
from mlops_ray.monitor.predlog.writer import write_hours
from mlops_ray.storage import procs

log = logging.getLogger("mlops_ray.monitor.predlog")


def recover_orphans(spool_dir: str, root: str, input_types: dict[str, str] | None = None) -> int:
    """Turn the spool segments of dead processes (of this host) into Parquet under ``root``.

    Segments of live processes, and of other hosts, are left alone. A segment is claimed by
    renaming it first, so two replicas recovering at once do not both write it. Torn or
    corrupt lines are skipped. ``input_types`` is used only for a segment whose header is
    unreadable. Returns the number of recovered records (rows).
    """
    if not os.path.isdir(spool_dir):
        return 0
    fs, root_path = filesystem_for(root)
    me_host, me_pid = hostname(), os.getpid()
    recovered = 0
    for name in sorted(os.listdir(spool_dir)):
        m = SPOOL_RE.match(name)
        if not m:
            continue
        holder_host, holder_pid = (m["chost"], int(m["cpid"])) if m["cpid"] else (m["host"], int(m["pid"]))
        if holder_host != me_host or m["host"] != me_host:
            continue
        path = os.path.join(spool_dir, name)
        started = None
        if not m["cpid"]:
            started = _header_pid_started(path)
        if holder_pid == me_pid or procs.alive(holder_pid, started):
            continue
        base = name.split(CLAIM)[0]
        claimed = os.path.join(spool_dir, f"{base}{CLAIM}{me_host}__{me_pid}")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            continue                           # someone else claimed it
        try:
            n = _recover_segment(claimed, fs, root_path, m, input_types)
        except Exception as e:
            log.warning("prediction log: could not recover %s: %s; left for a later attempt", base, e)
            try:
                os.rename(claimed, os.path.join(spool_dir, base))
            except OSError:
                pass
            continue
        os.unlink(claimed)
        recovered += n
    return recovered


def _header_pid_started(path: str) -> float | None:
    """The writer's start time a segment's header records (None: an older header, or unreadable)."""
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
        started = header.get("pid_started") if isinstance(header, dict) else None
        return float(started) if isinstance(started, (int, float)) else None
    except (OSError, ValueError):
        return None


def _recover_segment(path: str, fs, root: str, m: re.Match, fallback_types) -> int:
    header, records, skipped = read_spool(path)
    if skipped:
        log.info("prediction log: skipped %d torn/corrupt line(s) in %s", skipped, os.path.basename(path))
    if not records:
        return 0
    types = (header or {}).get("input_types") or fallback_types
    if not types:
        raise ValueError("spool header unreadable and no input_types given")
    types = check_input_types(types)
    multiclass = bool((header or {}).get("multiclass", False))
    name = part_name(m["owner"], m["pid"], m["token"], f"s{int(m['seg']):06d}")
    done: dict[int, int] = {}
    write_hours(fs, root, group_by_hour(records), types, multiclass, lambda _h: name, done)
    return sum(done.values())
