"""Reading the prediction log: the records of a time window, and the files one writer wrote.

In: the log's root (a path or URI) and a window. Out: ``read_log``, one table of the records
(``format``'s schema, the input structs of every file merged), de-duplicated and sorted by time;
``written_files``, the Parquet files a ``TableWriter`` of one owner wrote in a window.
"""
from __future__ import annotations

import posixpath
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyarrow import fs as pafs

from mlops_ray.monitor.predlog.format import (
    PARTITIONING, TS_TYPE, filesystem_for, hour_dir, hour_key, part_prefix, safe)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def read_log(root: str, since: datetime | None = None, until: datetime | None = None,
             dedup: bool = True) -> pa.Table:
    """The logged records with ``since <= ts < until`` (naive datetimes are UTC), sorted by ts.

    Files written with different input columns are merged (missing struct fields are null).
    ``dedup`` keeps the first record per ``(request_id, row)``.
    """
    fs, path = filesystem_for(root)
    base = pa.schema([("request_id", pa.string()), ("row", pa.int32()), ("ts", TS_TYPE),
                      ("model_version", pa.string()), ("inputs", pa.struct([])), ("prediction", pa.float64())])
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return base.empty_table()
    dataset = pads.dataset(path, format="parquet", filesystem=fs, partitioning=PARTITIONING)
    frags = list(dataset.get_fragments())
    if not frags:
        return base.empty_table()
    try:
        schema = pa.unify_schemas([f.physical_schema for f in frags], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"prediction log files under {root} have incompatible schemas: {e}") from None
    schema = pa.schema([f for f in schema if f.name not in ("date", "hour")])
    dataset = pads.dataset(path, format="parquet", filesystem=fs, partitioning=PARTITIONING,
                           schema=pa.unify_schemas([schema, PARTITIONING.schema]))
    flt = None
    if since is not None:
        s = _utc(since)
        day = f"{s:%Y-%m-%d}"
        flt = (pads.field("ts") >= pa.scalar(s, TS_TYPE)) & (
            (pads.field("date") > day) | ((pads.field("date") == day) & (pads.field("hour") >= s.hour)))
    if until is not None:
        u = _utc(until)
        day = f"{u:%Y-%m-%d}"
        f2 = (pads.field("ts") < pa.scalar(u, TS_TYPE)) & (
            (pads.field("date") < day) | ((pads.field("date") == day) & (pads.field("hour") <= u.hour)))
        flt = f2 if flt is None else flt & f2
    table = dataset.to_table(columns=schema.names, filter=flt)
    if dedup and table.num_rows:
        idx = pa.array(range(table.num_rows), pa.int64())
        keys = pa.table({"request_id": table["request_id"], "row": table["row"], "_i": idx})
        first = keys.group_by(["request_id", "row"], use_threads=False).aggregate([("_i", "min")])
        keep = first["_i_min"]
        table = table.take(keep.take(pc.sort_indices(keep)))
    if table.num_rows:
        table = table.take(pc.sort_indices(table, [("ts", "ascending"), ("request_id", "ascending"),
                                                           ("row", "ascending")]))
    return table


def written_files(root: str, owner: str, t_start: float, t_end: float) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    """(filesystem, files): the Parquet files ``TableWriter(root, owner)`` wrote in the UTC hours
    from ``t_start`` to ``t_end`` (seconds since the epoch)."""
    fs, base = filesystem_for(root)
    prefix = part_prefix(safe(owner))
    infos = []
    for hour in range(hour_key(int(t_start * 1e6)), hour_key(int(t_end * 1e6)) + 1):
        sel = pafs.FileSelector(hour_dir(base, hour), allow_not_found=True)
        infos += [i for i in fs.get_file_info(sel)
                  if i.type == pafs.FileType.File and posixpath.basename(i.path).startswith(prefix)]
    return fs, infos
