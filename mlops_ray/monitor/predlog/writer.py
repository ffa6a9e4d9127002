"""Writing the prediction log: the replicas' spool writer and batch scoring's table writer.

``PredictionLog`` (one per serving replica). ``append`` writes the request's records to a local
append-only *spool* file (JSON lines, one line per ``append`` call, one ``write`` syscall, no
fsync: a SIGKILLed process does not lose what reached the page cache) before it returns, so
before the server answers. A background thread turns the spooled records into Parquet files
under ``root``, one file per UTC hour (layout and names: ``format``), written under a hidden temp
name and renamed on local disks, written directly (atomic on close) on object stores. Only then
is the spool segment deleted; a crash in between duplicates records (``read_log`` de-duplicates
by ``(request_id, row)``), it never loses them. A failed Parquet write keeps the spool segment,
counts an error and is retried at the next flush. The spool of a process that died is turned
into Parquet by ``recovery.recover_orphans``.

``TableWriter`` (batch scoring): whole tables in ``format.log_schema``, written the same way, one
file per table and UTC hour, under names ``reader.written_files`` finds again.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import secrets
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from mlops_ray.monitor.predlog.format import (
    COLUMNS, ENCODER, FORMAT_VERSION, TS_TYPE, US_PER_HOUR, check_input_types, filesystem_for,
    group_by_hour, hostname, hour_dir, hour_key, part_name, read_spool, records_table, safe, spool_name)
from mlops_ray.storage import procs

log = logging.getLogger("mlops_ray.monitor.predlog")


def write_parquet(fs: pafs.FileSystem, table: pa.Table, path: str) -> None:
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


def write_hours(fs, root: str, by_hour: dict[int, list], input_types, multiclass, name_for,
                done: dict[int, int]) -> None:
    """Write spool records (grouped by ``format.group_by_hour``) as one Parquet file per hour not
    yet in ``done`` (hour → rows written). Raises on failure; ``done`` then says which hours made it."""
    for hour in sorted(by_hour):
        if hour in done:
            continue
        table = records_table(by_hour[hour], input_types, multiclass)
        write_parquet(fs, table, posixpath.join(hour_dir(root, hour), name_for(hour)))
        done[hour] = table.num_rows


# --------------------------------------------------------------------------- the replicas' log

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
        self.input_types = check_input_types(input_types)
        self.multiclass = bool(multiclass)
        self.owner = safe(owner)
        self.spool_dir = os.path.abspath(spool_dir)
        os.makedirs(self.spool_dir, exist_ok=True)
        self.flush_rows = max(1, int(flush_rows))
        self.flush_s = float(flush_s)
        self.pid = os.getpid()
        self.host = hostname()
        self.token = secrets.token_hex(4)
        self._header = ENCODER.encode({
            "predlog": FORMAT_VERSION, "owner": self.owner, "pid": self.pid, "host": self.host,
            "token": self.token, "pid_started": procs.started(self.pid),
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
        line = ENCODER.encode(record).encode() + b"\n"
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
        path = os.path.join(self.spool_dir, spool_name(self.host, self.owner, self.pid, self.token, self._seg))
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
            b.records = [r for p in b.paths for r in read_spool(p)[1]]
        by_hour = group_by_hour(json.loads(x) if isinstance(x, bytes) else x for x in b.records)

        def name_for(_hour: int) -> str:
            self._seq += 1
            return part_name(self.owner, self.pid, self.token, f"{self._seq:06d}")

        before = dict(b.done)
        try:
            write_hours(self.fs, self.root, by_hour, self.input_types, self.multiclass, name_for, b.done)
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


# --------------------------------------------------------------------------- batch scoring's writer

class TableWriter:
    """Writes whole tables of predictions to the log under ``root``, as ``owner`` (e.g. a batch run):
    one Parquet file per ``write`` and UTC hour of its rows' ``ts``, named uniquely for this
    process, never seen half-written. The table has the log's columns (``format.log_schema``)."""

    def __init__(self, root: str, owner: str):
        self.fs, self.root = filesystem_for(root)
        self.owner = safe(owner)
        self.pid = os.getpid()
        self.token = secrets.token_hex(4)
        self.seq = 0

    def write(self, table: pa.Table) -> int:
        """Write ``table``; returns its rows."""
        if tuple(table.column_names) != COLUMNS or table.schema.field("ts").type != TS_TYPE:
            raise ValueError(f"a prediction log table has the columns {', '.join(COLUMNS)} (ts as {TS_TYPE}); "
                             f"got {table.schema}")
        if not table.num_rows:
            return 0
        us = table.column("ts").cast(pa.int64())
        lo, hi = (v.as_py() for v in pc.min_max(us).values())
        if lo is None:
            raise ValueError("a prediction log table needs a ts for every row")
        self.seq += 1
        name = part_name(self.owner, self.pid, self.token, f"{self.seq:06d}")
        for hour in range(hour_key(lo), hour_key(hi) + 1):
            part = table if hour_key(lo) == hour_key(hi) else table.filter(
                pc.and_(pc.greater_equal(us, hour * US_PER_HOUR), pc.less(us, (hour + 1) * US_PER_HOUR)))
            if part.num_rows:
                write_parquet(self.fs, part, posixpath.join(hour_dir(self.root, hour), name))
        return table.num_rows
