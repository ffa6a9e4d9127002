"""The prediction log: every answered prediction, written by the serving replicas.

One record per predicted row: ``request_id`` (string), ``row`` (int32, the row's index in
its request), ``ts`` (timestamp[us, UTC]), ``model_version`` (string), ``inputs`` (a struct
with one field per input column, typed from ``input_types``) and ``prediction`` (float64,
or list<float64> when ``multiclass``). Nothing else.

Durability. ``append`` writes the request's records to a local append-only *spool* file
(JSON lines, one line per ``append`` call, one ``write`` syscall, no fsync: a SIGKILLed
process does not lose what reached the page cache) before it returns, so before the
server answers. A background thread turns the spooled records into Parquet files under
``root`` — one file per UTC hour::

    {root}/date=YYYY-MM-DD/hour=HH/part-{owner}-{pid}-{seq}.parquet

(``seq`` = an 8-hex-digit token of the log instance + a counter, or ``s{segment}`` for
files rebuilt from an orphaned spool), written under a hidden temp name and renamed on
local disks, written directly (atomic on close) on object stores. Only then is the
spool segment deleted; a crash in between duplicates records (``read_log`` de-duplicates
by ``(request_id, row)``), it never loses them. A failed Parquet write keeps the spool
segment, counts an error and is retried at the next flush.

Spool segments are named ``predlog__{host}__{owner}__{pid}__{token}__{segment}.jsonl`` and
start with a header line (a JSON object: owner, pid, host, process start time,
input_types, multiclass); each further line is a JSON array
``[request_id, ts_us, model_version, rows, outputs]``. ``recover_orphans`` (call it when a
replica starts) converts the segments of dead processes of this host into Parquet.

Pure Python + pyarrow: no Ray imports.
"""
from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
import secrets
import socket
import threading
import time
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow import fs as pafs

log = logging.getLogger(__name__)

SPOOL_PREFIX = "predlog__"
SPOOL_SUFFIX = ".jsonl"
_CLAIM = ".claimed__"
_FORMAT_VERSION = 1
_US_PER_HOUR = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1

TS_TYPE = pa.timestamp("us", tz="UTC")
KIND_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(), "float": pa.float64(), "numeric": pa.float64(), "bool": pa.bool_(),
    "string": pa.string(), "categorical": pa.string(), "datetime": TS_TYPE,
}


# --------------------------------------------------------------------------- names

def _safe(s: str) -> str:
    """A file-name-safe component without ``__`` (the spool name separator)."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.\-]", "_", str(s))).strip("_") or "x"


def _hostname() -> str:
    return _safe(socket.gethostname())


def _spool_name(host: str, owner: str, pid: int, token: str, seg: int) -> str:
    return f"{SPOOL_PREFIX}{host}__{owner}__{pid}__{token}__{seg:06d}{SPOOL_SUFFIX}"


_SPOOL_RE = re.compile(
    r"^predlog__(?P<host>[^_]+(?:_[^_]+)*)__(?P<owner>[^_]+(?:_[^_]+)*)__(?P<pid>\d+)__(?P<token>[0-9a-f]+)"
    r"__(?P<seg>\d+)\.jsonl(?:\.claimed__(?P<chost>[^_]+(?:_[^_]+)*)__(?P<cpid>\d+))?$")


def _process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _process_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether ``pid`` (on this host) is a running process — and the same one if its start time is known."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                              # exists, belongs to another user
    except OSError:
        return True                       # cannot tell: leave its files alone
    try:                                  # a SIGKILLed child not yet reaped is a zombie: dead
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        after = stat[stat.rindex(b")") + 2:].split()
        if after[0] in (b"Z", b"X"):
            return False
        if start_time is not None and int(after[19]) != start_time:
            return False                  # the pid was reused by another process
    except (OSError, ValueError, IndexError):
        pass
    return True


# --------------------------------------------------------------------------- value coercion

def _json_default(o: Any):
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if hasattr(o, "tolist"):              # numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default, allow_nan=True)


def _to_int(v):
    t = type(v)
    if t is int:
        return v if _INT64_MIN <= v <= _INT64_MAX else None
    if v is None:
        return None
    if t is bool:
        return int(v)
    if t is float:
        return int(v) if v.is_integer() and _INT64_MIN <= v <= _INT64_MAX else None
    if t is str:
        try:
            return _to_int(int(v.strip()))
        except ValueError:
            try:
                return _to_int(float(v))
            except ValueError:
                return None
    return None


def _to_float(v):
    t = type(v)
    if t is float:
        return v
    if v is None:
        return None
    if t is int or t is bool:
        try:
            return float(v)
        except OverflowError:
            return None
    if t is str:
        try:
            return float(v)
        except ValueError:
            return None
    return None


_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def _to_bool(v):
    t = type(v)
    if t is bool or v is None:
        return v
    if t is int:
        return v != 0
    if t is float:
        return None if math.isnan(v) else v != 0
    if t is str:
        s = v.strip().lower()
        return True if s in _TRUE else False if s in _FALSE else None
    return None


def _to_str(v):
    t = type(v)
    if t is str or v is None:
        return v
    if t is bool:
        return "true" if v else "false"
    if t is int or t is float:
        return str(v)
    return _ENCODER.encode(v)


def _to_datetime(v):
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v.strip())
        except ValueError:
            return None
    if isinstance(v, datetime):
        try:
            return v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v.astimezone(timezone.utc)
        except (OverflowError, ValueError):
            return None
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day, tzinfo=timezone.utc)
    return None


_COERCE = {"int": _to_int, "float": _to_float, "numeric": _to_float, "bool": _to_bool,
           "string": _to_str, "categorical": _to_str, "datetime": _to_datetime}


def _to_prediction(v, multiclass: bool):
    if multiclass:
        if isinstance(v, list):
            return [_to_float(x) for x in v]
        x = _to_float(v)
        return None if x is None else [x]
    if isinstance(v, list):
        return _to_float(v[0]) if len(v) == 1 else None
    return _to_float(v)


# --------------------------------------------------------------------------- schema / tables

def _check_input_types(input_types: dict[str, str]) -> dict[str, str]:
    if not input_types:
        raise ValueError("input_types is empty: the log needs at least one input column")
    bad = {c: k for c, k in input_types.items() if k not in KIND_TYPES}
    if bad:
        raise ValueError(f"unknown input kinds {bad}; expected one of {sorted(KIND_TYPES)}")
    return dict(input_types)


def log_id_column(cfg, bundle) -> tuple:
    """The data's id column, accepted in requests and logged (as text), when it is not a model input:
    labels keyed by it join later; it is never a feature."""
    c = cfg.data.id_column
    return (c,) if c and c not in bundle.spec.input_types else ()


def log_schema(input_types: dict[str, str], multiclass: bool = False) -> pa.Schema:
    """The schema of the Parquet files for these input columns."""
    return pa.schema([
        ("request_id", pa.string()), ("row", pa.int32()), ("ts", TS_TYPE), ("model_version", pa.string()),
        ("inputs", pa.struct([(c, KIND_TYPES[k]) for c, k in input_types.items()])),
        ("prediction", pa.list_(pa.float64()) if multiclass else pa.float64()),
    ])


def _records_table(records: Iterable[list], input_types: dict[str, str], multiclass: bool) -> pa.Table:
    """Spool records ``[request_id, ts_us, version, rows, outputs]`` → one table, a row per input row."""
    cols = list(input_types)
    coerce = [_COERCE[input_types[c]] for c in cols]
    rid, rown, ts, ver, pred = [], [], [], [], []
    vals: list[list] = [[] for _ in cols]
    for r_id, ts_us, version, rows, outputs in records:
        for i, row in enumerate(rows):
            rid.append(r_id)
            rown.append(i)
            ts.append(ts_us)
            ver.append(version)
            pred.append(_to_prediction(outputs[i], multiclass))
            get = row.get if isinstance(row, dict) else (lambda _c: None)
            for j, c in enumerate(cols):
                vals[j].append(coerce[j](get(c)))
    schema = log_schema(input_types, multiclass)
    struct_t = schema.field("inputs").type
    inputs = pa.StructArray.from_arrays(
        [pa.array(v, type=struct_t.field(j).type) for j, v in enumerate(vals)], fields=list(struct_t))
    return pa.Table.from_arrays([
        pa.array(rid, pa.string()), pa.array(rown, pa.int32()),
        pa.array(ts, pa.int64()).cast(TS_TYPE), pa.array(ver, pa.string()), inputs,
        pa.array(pred, schema.field("prediction").type)], schema=schema)


def _hour_key(ts_us: int) -> int:
    return ts_us // _US_PER_HOUR


def _hour_dir(root: str, hour: int) -> str:
    t = _EPOCH + timedelta(hours=hour)
    return posixpath.join(root, f"date={t:%Y-%m-%d}", f"hour={t:%H}")


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path): the store's resolution (URIs once per process), with POSIX separators."""
    from mlops_ray.storage.fs import filesystem_for as resolve
    fs, path = resolve(uri)
    return fs, path.replace(os.sep, "/")


def _write_parquet(fs: pafs.FileSystem, table: pa.Table, path: str) -> None:
    """Write ``path`` so that readers never see a partial file."""
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        # hidden temp name (pyarrow.dataset ignores '.'-prefixed files), then atomic rename
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{secrets.token_hex(4)}.tmp")
        try:
            pq.write_table(table, tmp, filesystem=fs)
            fs.move(tmp, path)
        except BaseException:
            try:
                fs.delete_file(tmp)
            except Exception:
                pass
            raise
    else:
        pq.write_table(table, path, filesystem=fs)    # object stores publish on close: atomic


def _write_hours(fs, root: str, by_hour: dict[int, list], input_types, multiclass, name_for,
                 done: dict[int, int]) -> None:
    """Write one Parquet file per hour not yet in ``done`` (hour → rows written). Raises on failure;
    ``done`` then says which hours made it."""
    for hour in sorted(by_hour):
        if hour in done:
            continue
        table = _records_table(by_hour[hour], input_types, multiclass)
        _write_parquet(fs, table, posixpath.join(_hour_dir(root, hour), name_for(hour)))
        done[hour] = table.num_rows


def _group_by_hour(records: Iterable[list]) -> dict[int, list]:
    by_hour: dict[int, list] = {}
    for rec in records:
        by_hour.setdefault(_hour_key(rec[1]), []).append(rec)
    return by_hour


def _read_spool(path: str) -> tuple[dict | None, list[list], int]:
    """(header, records, skipped lines) of a spool segment; torn or corrupt lines are skipped."""
    header, records, skipped = None, [], 0
    with open(path, "rb") as f:
        data = f.read()
    for i, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(obj, dict) and i == 0:
            header = obj
        elif isinstance(obj, list) and len(obj) == 5 and isinstance(obj[3], list) and isinstance(obj[4], list) \
                and isinstance(obj[1], int) and len(obj[3]) == len(obj[4]):
            records.append(obj)
        else:
            skipped += 1
    return header, records, skipped


# --------------------------------------------------------------------------- the log

class _Batch:
    """Spool segments rotated out of the writer, waiting to become Parquet."""

    __slots__ = ("paths", "records", "rows", "done")

    def __init__(self, paths: list[str], records: list[list] | None, rows: int):
        self.paths = paths
        self.records = records          # parsed records in memory; None → re-read from the spool
        self.rows = rows
        self.done: dict[int, int] = {}  # hours already written → rows (not rewritten on retry)


class PredictionLog:
    """Per-replica prediction log: spool on ``append``, Parquet from a background thread.

    ``append`` is cheap and synchronous (call it in the request handler before answering);
    if it raises, the record is not durable and the request should not be answered as a
    success. Parquet IO happens only in ``flush`` (background thread, or explicit).
    """

    def __init__(self, root: str, input_types: dict[str, str], *, owner: str, spool_dir: str,
                 flush_rows: int = 1000, flush_s: float = 30.0, multiclass: bool = False):
        self.root_uri = root
        self.fs, self.root = filesystem_for(root)
        self.input_types = _check_input_types(input_types)
        self.multiclass = bool(multiclass)
        self.owner = _safe(owner)
        self.spool_dir = os.path.abspath(spool_dir)
        os.makedirs(self.spool_dir, exist_ok=True)
        self.flush_rows = max(1, int(flush_rows))
        self.flush_s = float(flush_s)
        self.pid = os.getpid()
        self.host = _hostname()
        self.token = secrets.token_hex(4)
        self._header = _ENCODER.encode({
            "predlog": _FORMAT_VERSION, "owner": self.owner, "pid": self.pid, "host": self.host,
            "token": self.token, "start_time": _process_start_time(self.pid),
            "input_types": self.input_types, "multiclass": self.multiclass}).encode() + b"\n"
        self.stats: dict = {"appended": 0, "flushed": 0, "files": 0, "errors": 0, "pending": 0,
                            "last_error": None}
        self._lock = threading.Lock()          # spool writes, buffer, rotation
        self._flush_lock = threading.Lock()    # one flush at a time
        self._fd: int | None = None
        self._seg = 0
        self._seg_path: str | None = None
        self._lines: list[bytes] = []
        self._rows = 0
        self._batches: list[_Batch] = []       # rotated out, not yet written (failed writes wait here)
        self._seq = 0
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"predlog-{self.owner}", daemon=True)
        self._thread.start()

    # ---- hot path
    def append(self, request_id: str, version: str, rows: list[dict], outputs, ts: float | None = None) -> None:
        """Record one answered request: one record per row, ``outputs[i]`` answers ``rows[i]``.

        Returns once the records are in the spool file (written to the OS, no fsync).
        """
        if hasattr(outputs, "tolist"):
            outputs = outputs.tolist()
        elif not isinstance(outputs, list):
            outputs = list(outputs)
        if len(outputs) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(outputs)} outputs")
        if not rows:
            return
        ts_us = int((time.time() if ts is None else ts) * 1_000_000)
        record = [str(request_id), ts_us, str(version), rows, outputs]
        line = _ENCODER.encode(record).encode() + b"\n"
        with self._lock:
            if self._closed:
                raise RuntimeError("PredictionLog is closed")
            if self._fd is None:
                self._open_segment()
            view = memoryview(line)
            try:
                while view:                     # regular files: one write, loop only on a short write
                    view = view[os.write(self._fd, view):]
            except BaseException:
                # the segment may now end in a torn line: seal it (its complete lines become a
                # batch, the torn tail is skipped when read) so the next append starts clean
                self._rotate()
                raise
            # the flush builds Parquet from the objects, not by parsing the spool line again
            # (that was half of the ~14 us per row the flush thread held the GIL for)
            self._lines.append(record)
            self._rows += len(rows)
            self.stats["appended"] += len(rows)
            full = self._rows >= self.flush_rows
        if full:
            self._wake.set()

    def _open_segment(self) -> None:
        self._seg += 1
        path = os.path.join(self.spool_dir, _spool_name(self.host, self.owner, self.pid, self.token, self._seg))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        try:
            os.write(fd, self._header)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._seg_path = fd, path

    def _rotate(self) -> None:
        """Move the current segment into a batch (caller holds ``_lock``)."""
        if self._fd is None:
            return
        os.close(self._fd)
        if self._lines:
            self._batches.append(_Batch([self._seg_path], self._lines, self._rows))
        else:
            os.unlink(self._seg_path)
        self._fd, self._seg_path, self._lines, self._rows = None, None, [], 0

    # ---- flushing
    def flush(self) -> int:
        """Write everything spooled so far (and earlier failed batches) to Parquet; returns rows written."""
        with self._flush_lock:
            with self._lock:
                self._rotate()
                batches = list(self._batches)
            written = 0
            for b in batches:
                try:
                    written += self._write_batch(b)
                except Exception as e:   # keep the spool; retry at the next flush
                    self.stats["errors"] += 1
                    self.stats["last_error"] = f"{type(e).__name__}: {e}"
                    log.warning("prediction log: Parquet write to %s failed (%s); %d rows stay spooled",
                                self.root_uri, e, b.rows)
                    b.records = None     # drop the in-memory copy; the spool file has them
                    continue
                with self._lock:
                    self._batches.remove(b)
                for p in b.paths:
                    try:
                        os.unlink(p)
                    except FileNotFoundError:
                        pass
            with self._lock:                     # appends (and a torn write's rotation) change both
                self.stats["pending"] = sum(b.rows for b in self._batches) + self._rows
            return written

    def _write_batch(self, b: _Batch) -> int:
        """Write a batch's hours that are not written yet; returns the rows written now."""
        if b.records is None:
            b.records = [r for p in b.paths for r in _read_spool(p)[1]]
        by_hour = _group_by_hour(json.loads(x) if isinstance(x, bytes) else x for x in b.records)

        def name_for(_hour: int) -> str:
            self._seq += 1
            return f"part-{self.owner}-{self.pid}-{self.token}{self._seq:06d}.parquet"

        before = dict(b.done)
        try:
            _write_hours(self.fs, self.root, by_hour, self.input_types, self.multiclass, name_for, b.done)
        finally:
            new = [h for h in b.done if h not in before]
            self.stats["files"] += len(new)
            self.stats["flushed"] += sum(b.done[h] for h in new)
        return sum(b.done[h] for h in new)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
            except Exception:                  # never let the thread die
                log.exception("prediction log: flush failed")

    def close(self) -> None:
        """Flush, stop the thread and remove the spool (kept if the final write failed)."""
        with self._lock:
            if self._closed:
                return
        self._stop.set()
        self._wake.set()
        self._thread.join()
        with self._lock:
            self._closed = True                 # later appends raise; everything before is flushed now
        self.flush()
        with self._lock:                        # another thread may be flushing too
            unwritten = sum(b.rows for b in self._batches)
        if unwritten:
            log.warning("prediction log closed with %d rows unwritten; they stay in %s for recover_orphans",
                        unwritten, self.spool_dir)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- recovery

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
    me_host, me_pid = _hostname(), os.getpid()
    recovered = 0
    for name in sorted(os.listdir(spool_dir)):
        m = _SPOOL_RE.match(name)
        if not m:
            continue
        holder_host, holder_pid = (m["chost"], int(m["cpid"])) if m["cpid"] else (m["host"], int(m["pid"]))
        if holder_host != me_host or m["host"] != me_host:
            continue
        path = os.path.join(spool_dir, name)
        start_time = None
        if not m["cpid"]:
            start_time = _header_start_time(path)
        if holder_pid == me_pid or _process_alive(holder_pid, start_time):
            continue
        base = name.split(_CLAIM)[0]
        claimed = os.path.join(spool_dir, f"{base}{_CLAIM}{me_host}__{me_pid}")
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


def _header_start_time(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
        return header.get("start_time") if isinstance(header, dict) else None
    except (OSError, ValueError):
        return None


def _recover_segment(path: str, fs, root: str, m: re.Match, fallback_types) -> int:
    header, records, skipped = _read_spool(path)
    if skipped:
        log.info("prediction log: skipped %d torn/corrupt line(s) in %s", skipped, os.path.basename(path))
    if not records:
        return 0
    types = (header or {}).get("input_types") or fallback_types
    if not types:
        raise ValueError("spool header unreadable and no input_types given")
    types = _check_input_types(types)
    multiclass = bool((header or {}).get("multiclass", False))
    name = f"part-{m['owner']}-{m['pid']}-{m['token']}s{int(m['seg']):06d}.parquet"
    done: dict[int, int] = {}
    _write_hours(fs, root, _group_by_hour(records), types, multiclass, lambda _h: name, done)
    return sum(done.values())


# --------------------------------------------------------------------------- reading

_PARTITIONING = pads.partitioning(pa.schema([("date", pa.string()), ("hour", pa.int32())]), flavor="hive")


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
    dataset = pads.dataset(path, format="parquet", filesystem=fs, partitioning=_PARTITIONING)
    frags = list(dataset.get_fragments())
    if not frags:
        return base.empty_table()
    try:
        schema = pa.unify_schemas([f.physical_schema for f in frags], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"prediction log files under {root} have incompatible schemas: {e}") from None
    schema = pa.schema([f for f in schema if f.name not in ("date", "hour")])
    dataset = pads.dataset(path, format="parquet", filesystem=fs, partitioning=_PARTITIONING,
                           schema=pa.unify_schemas([schema, _PARTITIONING.schema]))
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
