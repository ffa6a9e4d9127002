"""The prediction log: spool + Parquet, hour partitions, recovery after SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_ray.monitor.predlog import PredictionLog, read_log, recover_orphans

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TYPES = {"amount": "float", "count": "int", "ok": "bool", "merchant": "string", "when": "datetime"}
UTC = timezone.utc


def wait_for(cond, deadline_s: float = 60.0, step: float = 0.02):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def parquet_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


def spool_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("predlog__*")) if spool.exists() else []


def make_log(tmp_path, **kw) -> PredictionLog:
    kw.setdefault("flush_rows", 10**9)
    kw.setdefault("flush_s", 3600.0)
    kw.setdefault("owner", "replica-1")
    return PredictionLog(str(tmp_path / "log"), kw.pop("types", TYPES), spool_dir=str(tmp_path / "spool"), **kw)


def run_child(code: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=str(REPO), env=env,
                            stdout=subprocess.PIPE, text=True, **kw)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------- round trip and types

def test_round_trip_types_nulls_datetimes(tmp_path):
    lg = make_log(tmp_path)
    ts = datetime(2026, 3, 1, 12, 30, tzinfo=UTC).timestamp()
    rows = [
        {"amount": 12.5, "count": 3, "ok": True, "merchant": "acme", "when": "2026-02-28T10:00:00Z"},
        {"amount": None, "count": None, "ok": None, "merchant": None, "when": None},
        {"amount": "7.25", "count": 4.0, "ok": "false", "merchant": 42, "when": datetime(2026, 1, 2, 3, 4, 5)},
        {"amount": "n/a", "count": "x", "ok": "maybe", "merchant": 1.5, "when": "not a date"},
        {"merchant": "only-this", "unknown_column": 1},
        {"amount": 1, "count": 2.5, "ok": 0, "merchant": True,
         "when": datetime(2026, 1, 2, 5, 0, tzinfo=timezone.utc).astimezone(timezone.utc)},
    ]
    lg.append("req-1", "v3", rows, [0.1, 0.2, 0.3, 0.4, None, 1], ts=ts)
    assert lg.stats["appended"] == 6
    assert lg.flush() == 6
    lg.close()
    t = read_log(str(tmp_path / "log"))
    assert t.column_names == ["request_id", "row", "ts", "model_version", "inputs", "prediction"]
    assert t.schema.field("row").type == pa.int32()
    assert t.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert t.schema.field("inputs").type == pa.struct([
        ("amount", pa.float64()), ("count", pa.int64()), ("ok", pa.bool_()), ("merchant", pa.string()),
        ("when", pa.timestamp("us", tz="UTC"))])
    assert t.schema.field("prediction").type == pa.float64()
    recs = t.sort_by("row").to_pylist()
    assert [r["row"] for r in recs] == list(range(6))
    assert {r["request_id"] for r in recs} == {"req-1"} and {r["model_version"] for r in recs} == {"v3"}
    assert recs[0]["ts"] == datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    ins = [r["inputs"] for r in recs]
    assert ins[0] == {"amount": 12.5, "count": 3, "ok": True, "merchant": "acme",
                      "when": datetime(2026, 2, 28, 10, tzinfo=UTC)}
    assert ins[1] == dict.fromkeys(TYPES)
    assert ins[2] == {"amount": 7.25, "count": 4, "ok": False, "merchant": "42",
                      "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)}        # naive datetime = UTC
    assert ins[3] == {"amount": None, "count": None, "ok": None, "merchant": "1.5", "when": None}
    assert ins[4] == {"amount": None, "count": None, "ok": None, "merchant": "only-this", "when": None}
    assert ins[5]["amount"] == 1.0 and ins[5]["count"] is None and ins[5]["ok"] is False
    assert ins[5]["merchant"] == "true" and ins[5]["when"] == datetime(2026, 1, 2, 5, tzinfo=UTC)
    assert [r["prediction"] for r in recs] == [0.1, 0.2, 0.3, 0.4, None, 1.0]
    assert spool_files(tmp_path / "spool") == []


def test_multiclass_predictions(tmp_path):
    lg = make_log(tmp_path, multiclass=True)
    lg.append("r", "v1", [{"amount": 1.0}, {"amount": 2.0}], [[0.1, 0.9], [0.7, 0.2, 0.1]])
    lg.close()
    t = read_log(str(tmp_path / "log"))
    assert t.schema.field("prediction").type == pa.list_(pa.float64())
    assert t.sort_by("row")["prediction"].to_pylist() == [[0.1, 0.9], [0.7, 0.2, 0.1]]


def test_bad_input_types_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown input kinds"):
        make_log(tmp_path, types={"a": "complex"})
    with pytest.raises(ValueError, match="empty"):
        make_log(tmp_path, types={})


def test_rows_and_outputs_must_align(tmp_path):
    lg = make_log(tmp_path)
    with pytest.raises(ValueError, match="2 rows but 1 outputs"):
        lg.append("r", "v1", [{}, {}], [0.5])
    lg.close()
    assert lg.stats["appended"] == 0


def test_hour_partitions_and_time_filter(tmp_path):
    lg = make_log(tmp_path)
    t1 = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC).timestamp()
    t2 = datetime(2026, 3, 2, 0, 0, 1, tzinfo=UTC).timestamp()
    lg.append("a", "v1", [{"amount": 1.0}, {"amount": 2.0}], [0.1, 0.2], ts=t1)
    lg.append("b", "v1", [{"amount": 3.0}], [0.3], ts=t2)
    assert lg.flush() == 3
    lg.close()
    root = tmp_path / "log"
    files = parquet_files(root)
    assert [f.parent.relative_to(root).as_posix() for f in files] == ["date=2026-03-01/hour=23",
                                                                      "date=2026-03-02/hour=00"]
    assert all(f.name.startswith(f"part-replica-1-{os.getpid()}-") for f in files)
    assert pq.read_table(files[0]).num_rows == 2 and pq.read_table(files[1]).num_rows == 1
    assert lg.stats["files"] == 2 and lg.stats["flushed"] == 3
    assert read_log(str(root))["request_id"].to_pylist() == ["a", "a", "b"]
    assert read_log(str(root), since=datetime(2026, 3, 2))["request_id"].to_pylist() == ["b"]
    assert read_log(str(root), until=datetime(2026, 3, 2, tzinfo=UTC))["request_id"].to_pylist() == ["a", "a"]
    assert read_log(str(root), since=datetime(2026, 3, 3)).num_rows == 0
    assert read_log(str(tmp_path / "missing")).num_rows == 0


def test_read_log_merges_input_schemas_and_dedups(tmp_path):
    root = str(tmp_path / "log")
    a = PredictionLog(root, {"x": "int"}, owner="a", spool_dir=str(tmp_path / "s"), flush_s=3600)
    b = PredictionLog(root, {"x": "int", "y": "string"}, owner="b", spool_dir=str(tmp_path / "s"), flush_s=3600)
    a.append("r1", "v1", [{"x": 1}], [0.5], ts=1000.0)
    b.append("r2", "v2", [{"x": 2, "y": "q"}], [0.6], ts=2000.0)
    b.append("r1", "v1", [{"x": 9}], [0.9], ts=3000.0)           # same key as a's record: a duplicate
    a.close()
    b.close()
    full = read_log(root, dedup=False)
    assert full.num_rows == 3
    t = read_log(root)
    assert t.num_rows == 2
    recs = {r["request_id"]: r for r in t.to_pylist()}
    assert recs["r1"]["inputs"] == {"x": 1, "y": None} and recs["r1"]["prediction"] == 0.5   # the first kept
    assert recs["r2"]["inputs"] == {"x": 2, "y": "q"}


# ---------------------------------------------------------------- flush triggers

def test_flush_on_size(tmp_path):
    lg = make_log(tmp_path, flush_rows=50)
    for i in range(120):
        lg.append(f"r{i}", "v1", [{"amount": float(i)}], [0.5])
    # size-triggered flushes write whatever is buffered when the thread wakes (under load that can
    # be 83 rows at once), so assert the invariant: at least one flush, and fewer than 50 left
    assert wait_for(lambda: lg.stats["flushed"] >= 50 and lg.stats["appended"] - lg.stats["flushed"] < 50), lg.stats
    assert parquet_files(tmp_path / "log")
    lg.close()
    assert read_log(str(tmp_path / "log")).num_rows == 120


def test_flush_on_interval(tmp_path):
    lg = make_log(tmp_path, flush_s=0.05)
    lg.append("r0", "v1", [{"amount": 1.0}, {"amount": 2.0}], [0.1, 0.2])
    assert wait_for(lambda: lg.stats["flushed"] == 2), lg.stats
    assert read_log(str(tmp_path / "log")).num_rows == 2
    assert wait_for(lambda: spool_files(tmp_path / "spool") == [])
    lg.close()


def test_close_flushes_and_removes_spool(tmp_path):
    lg = make_log(tmp_path)
    for i in range(10):
        lg.append(f"r{i}", "v1", [{"amount": 1.0}], [0.5])
    assert len(spool_files(tmp_path / "spool")) == 1 and not parquet_files(tmp_path / "log")
    lg.close()
    assert read_log(str(tmp_path / "log")).num_rows == 10
    assert spool_files(tmp_path / "spool") == []
    assert lg.stats["appended"] == lg.stats["flushed"] == 10
    with pytest.raises(RuntimeError):
        lg.append("late", "v1", [{}], [0.1])
    lg.close()                                                    # idempotent


def test_spool_name_carries_host_owner_pid(tmp_path):
    from mlops_ray.monitor.predlog.format import hostname as _hostname
    lg = make_log(tmp_path, owner="SERVE_REPLICA::app#dep#x1")
    lg.append("r", "v1", [{"amount": 1.0}], [0.5])
    (f,) = spool_files(tmp_path / "spool")
    parts = f.name.split("__")
    assert parts[1] == _hostname() and parts[2] == "SERVE_REPLICA_app_dep_x1" and parts[3] == str(os.getpid())
    lg.close()



def _read_under_lock(name: str) -> property:
    def get(self):
        assert self._lock.locked(), f"{name} read without the log's lock (the flush thread changes it)"
        return self.__dict__[name]
    return property(get, lambda self, v: self.__dict__.__setitem__(name, v))


class _LockCheckedLog(PredictionLog):
    _rows, _batches, _closed = (_read_under_lock(n) for n in ("_rows", "_batches", "_closed"))


def test_the_buffer_and_pending_batches_are_read_only_under_the_lock(tmp_path):
    root = tmp_path / "log"
    root.write_text("blocked")                                    # a failed batch stays pending
    lg = _LockCheckedLog(str(root), TYPES, owner="replica-1", spool_dir=str(tmp_path / "spool"),
                         flush_rows=10**9, flush_s=3600.0)
    lg.append("r1", "v1", [{"amount": 1.0}], [0.1])
    assert lg.flush() == 0 and lg.stats["pending"] == 1
    lg.close()                                                    # warns that 1 row stays spooled
    lg.close()


# ---------------------------------------------------------------- failures and recovery

def test_parquet_write_failure_keeps_records_and_retries(tmp_path):
    root = tmp_path / "log"
    root.write_text("a file where the log directory should be")   # every write fails (even as root)
    lg = make_log(tmp_path)
    lg.append("r1", "v1", [{"amount": 1.0}, {"amount": 2.0}], [0.1, 0.2])
    assert lg.flush() == 0
    assert lg.stats["errors"] == 1 and lg.stats["flushed"] == 0 and lg.stats["pending"] == 2
    lg.append("r2", "v1", [{"amount": 3.0}], [0.3])
    assert lg.flush() == 0 and lg.stats["errors"] == 3                # both batches failed
    assert len(spool_files(tmp_path / "spool")) == 2                   # the records are still spooled
    root.unlink()
    assert lg.flush() == 3
    assert lg.stats["flushed"] == 3 and lg.stats["pending"] == 0
    assert spool_files(tmp_path / "spool") == []
    lg.close()
    t = read_log(str(root))
    assert sorted(zip(t["request_id"].to_pylist(), t["row"].to_pylist())) == [("r1", 0), ("r1", 1), ("r2", 0)]


def test_spool_write_error_raises_and_next_append_starts_clean(tmp_path, monkeypatch):
    from mlops_ray.monitor.predlog import writer as predlog
    lg = make_log(tmp_path)
    lg.append("ok-1", "v1", [{"amount": 1.0}], [0.1])
    real_write = os.write

    def short_then_fail(fd, data):
        real_write(fd, bytes(data[:5]))
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(predlog.os, "write", short_then_fail)
        with pytest.raises(OSError):
            lg.append("lost", "v1", [{"amount": 2.0}], [0.2])     # not acknowledged: may be missing
    lg.append("ok-2", "v1", [{"amount": 3.0}], [0.3])
    assert len(spool_files(tmp_path / "spool")) == 2              # the torn segment was sealed
    assert lg.flush() == 2
    lg.close()
    assert sorted(read_log(str(tmp_path / "log"))["request_id"].to_pylist()) == ["ok-1", "ok-2"]


def test_failed_close_leaves_spool_for_recovery(tmp_path):
    root = tmp_path / "log"
    root.write_text("blocked")
    lg = make_log(tmp_path)
    lg.append("r1", "v1", [{"amount": 1.0}], [0.1])
    lg.close()
    assert lg.stats["errors"] >= 1 and len(spool_files(tmp_path / "spool")) == 1
    root.unlink()
    # this process is alive: its spool is not an orphan
    assert recover_orphans(str(tmp_path / "spool"), str(root)) == 0
    assert len(spool_files(tmp_path / "spool")) == 1


def test_live_process_spool_is_left_alone(tmp_path):
    lg = make_log(tmp_path)
    lg.append("r1", "v1", [{"amount": 1.0}], [0.1])
    before = spool_files(tmp_path / "spool")
    assert recover_orphans(str(tmp_path / "spool"), str(tmp_path / "log")) == 0
    assert spool_files(tmp_path / "spool") == before and not parquet_files(tmp_path / "log")
    lg.close()
    assert read_log(str(tmp_path / "log")).num_rows == 1


CHILD_PREFIX = """
import os, sys
from mlops_ray.monitor.predlog import PredictionLog
TYPES = {types!r}
lg = PredictionLog({root!r}, TYPES, owner="child", spool_dir={spool!r}, flush_rows={flush_rows}, flush_s={flush_s})
"""


def test_dead_process_spool_recovered_torn_line_skipped(tmp_path):
    spool, root = tmp_path / "spool", tmp_path / "log"
    child = run_child(CHILD_PREFIX.format(types=TYPES, root=str(root), spool=str(spool), flush_rows=10**9,
                                          flush_s=3600) + """
for i in range(25):
    lg.append(f"r{i}", "v7", [{"amount": i, "when": "2026-03-01T00:00:00+01:00"}], [i / 100])
os._exit(0)                      # no close(): the spool stays behind
""")
    assert child.wait(timeout=120) == 0
    (f,) = spool_files(spool)
    with open(f, "ab") as fh:
        fh.write(b'["r-torn",17')   # a partial write cut by the kill
    other = f.with_name(f.name.replace(f"__{child.pid}__", "__1__").replace(f.name.split("__")[1], "otherhost"))
    other.write_bytes(f.read_bytes())                            # another host's spool: not ours to touch
    assert recover_orphans(str(spool), str(root)) == 25
    assert spool_files(spool) == [other]
    t = read_log(str(root))
    assert t.num_rows == 25 and "r-torn" not in t["request_id"].to_pylist()
    rec = t.filter(pa.compute.equal(t["request_id"], "r3")).to_pylist()[0]
    assert rec["model_version"] == "v7" and rec["prediction"] == 0.03
    assert rec["inputs"]["amount"] == 3.0 and rec["inputs"]["when"] == datetime(2026, 2, 28, 23, tzinfo=UTC)
    files = parquet_files(root)
    assert len(files) == 1 and files[0].name.startswith(f"part-child-{child.pid}-")
    assert recover_orphans(str(spool), str(root)) == 0


def test_recovery_without_header_uses_given_types(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    from mlops_ray.monitor.predlog.format import hostname as _hostname, spool_name as _spool_name
    pid = dead_pid()
    p = spool / _spool_name(_hostname(), "x", pid, "abcd0123", 1)
    p.write_bytes(b'{"predlog": 1, "inp\n["r1",1000000,"v1",[{"a":5}],[0.5]]\n')
    assert recover_orphans(str(spool), str(tmp_path / "log"), input_types={"a": "int"}) == 1
    assert read_log(str(tmp_path / "log")).to_pylist()[0]["inputs"] == {"a": 5}


def test_sigkill_mid_load_loses_nothing(tmp_path):
    """A child appends as fast as it can with flushes going on, reporting each id once append returned;
    it is SIGKILLed mid-way. Recovery + read_log must hold every reported id exactly once, and
    nothing that was never appended."""
    spool, root = tmp_path / "spool", tmp_path / "log"
    child = run_child(CHILD_PREFIX.format(types=TYPES, root=str(root), spool=str(spool), flush_rows=200,
                                          flush_s=0.05) + """
out = sys.stdout
for i in range(1_000_000):
    lg.append(f"id-{i}", "v1", [{"amount": float(i), "count": i, "merchant": "m"}, {"amount": -1.0}], [0.5, 0.25])
    out.write(f"{i}\\n")
    out.flush()
    if i == 1500:
        out.write("MARK\\n")
        out.flush()
""")
    reported: list[int] = []
    marked = False
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            if line.strip() == "MARK":
                marked = True
                break
            reported.append(int(line))
        assert marked, "child never reached the marker"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        rest = child.stdout.read()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "the child finished before it was killed"
    for line in rest.splitlines():
        if line.strip().isdigit():
            reported.append(int(line))
    assert len(reported) > 1500
    n = recover_orphans(str(spool), str(root))
    assert spool_files(spool) == []
    t = read_log(str(root))
    raw = read_log(str(root), dedup=False)
    keys = list(zip(t["request_id"].to_pylist(), t["row"].to_pylist()))
    assert len(keys) == len(set(keys))
    logged = {int(r[3:]) for r, _ in keys}
    missing = set(reported) - logged
    assert not missing, f"{len(missing)} reported ids missing, e.g. {sorted(missing)[:5]}"
    # at most the one append in flight when the kill landed may be logged without being reported
    assert logged <= set(range(max(reported) + 2))
    assert all((f"id-{i}", r) in set(keys) for i in logged for r in (0, 1))          # whole requests
    assert raw.num_rows >= t.num_rows and n <= raw.num_rows
    print(f"reported={len(reported)} logged={len(logged)} recovered_rows={n} raw_rows={raw.num_rows}")
    for rec in t.filter(pa.compute.equal(t["row"], 0)).slice(0, 50).to_pylist():
        assert rec["inputs"]["amount"] == float(rec["request_id"][3:]) and rec["prediction"] == 0.5


def _spool_for(spool: Path, pid: int, header: dict) -> Path:
    import json
    from mlops_ray.monitor.predlog.format import hostname, spool_name
    spool.mkdir(exist_ok=True)
    p = spool / spool_name(hostname(), "old", pid, "abcd0123", 1)
    p.write_text(json.dumps({"predlog": 1, "pid": pid, "input_types": {"a": "int"}, **header}) + "\n"
                 + '["r1",1000000,"v1",[{"a":5}],[0.5]]\n')
    return p


def test_spool_header_records_the_writer_start_time(tmp_path):
    import json
    import psutil
    lg = make_log(tmp_path)
    lg.append("r", "v1", [{"amount": 1.0}], [0.5])
    (f,) = spool_files(tmp_path / "spool")
    header = json.loads(f.read_bytes().split(b"\n")[0])
    assert header["pid"] == os.getpid()
    assert header["pid_started"] == pytest.approx(psutil.Process().create_time(), abs=0.05)
    lg.close()


def test_a_reused_pid_does_not_keep_a_dead_writers_spool(tmp_path):
    """A live process with the pid a spool names, started after the writer: the writer is dead."""
    import psutil
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = psutil.Process(other.pid).create_time()
        live = _spool_for(tmp_path / "spool", other.pid, {"pid_started": started})
        assert recover_orphans(str(tmp_path / "spool"), str(tmp_path / "log")) == 0
        assert spool_files(tmp_path / "spool") == [live]               # its writer runs
        live.unlink()
        _spool_for(tmp_path / "spool", other.pid, {"pid_started": started - 3600})
        assert recover_orphans(str(tmp_path / "spool"), str(tmp_path / "log")) == 1
        assert spool_files(tmp_path / "spool") == []
    finally:
        other.kill()
        other.wait()


def test_a_spool_of_an_older_version_is_checked_by_pid_alone(tmp_path):
    """Headers written before ``pid_started`` hold ``start_time`` in clock ticks: a live pid keeps
    the spool whatever it says, a dead one is recovered."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        p = _spool_for(tmp_path / "spool", other.pid, {"start_time": 12345})
        assert recover_orphans(str(tmp_path / "spool"), str(tmp_path / "log")) == 0
        assert spool_files(tmp_path / "spool") == [p]
    finally:
        other.kill()
        other.wait()
    assert recover_orphans(str(tmp_path / "spool"), str(tmp_path / "log")) == 1
    assert read_log(str(tmp_path / "log")).to_pylist()[0]["inputs"] == {"a": 5}


def test_table_writer_writes_a_file_per_hour_that_written_files_finds(tmp_path):
    from mlops_ray.monitor.predlog import TableWriter, log_schema, written_files
    root = str(tmp_path / "log")
    t1 = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
    t2 = datetime(2026, 3, 2, 0, 1, tzinfo=UTC)
    table = pa.table({"request_id": ["a", "b", "c"], "row": [0, 0, 0], "ts": [t1, t2, t1], "model_version": ["v1"] * 3,
                      "inputs": [{"x": 1}, {"x": 2}, {"x": 3}], "prediction": [0.1, 0.2, 0.3]},
                     schema=log_schema({"x": "int"}))
    w = TableWriter(root, owner="batch-run:1")
    assert w.write(table) == 3
    files = parquet_files(tmp_path / "log")
    assert [f.parent.relative_to(root).as_posix() for f in files] == ["date=2026-03-01/hour=23",
                                                                      "date=2026-03-02/hour=00"]
    assert all(f.name.startswith(f"part-batch-run_1-{os.getpid()}-") for f in files)
    assert read_log(root)["request_id"].to_pylist() == ["a", "c", "b"]
    fs, infos = written_files(root, "batch-run:1", t1.timestamp(), t2.timestamp())
    assert sorted(i.path for i in infos) == [str(f) for f in files]
    assert written_files(root, "batch-other", t1.timestamp(), t2.timestamp())[1] == []
    with pytest.raises(ValueError, match="has the columns request_id, row, ts"):
        w.write(table.drop_columns(["row"]))
