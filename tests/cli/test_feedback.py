"""`feedback` right after traffic: labels for rows the replicas have not written yet are stored
and counted once the log is written, and the command says so."""
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from mlops_ray.cli import app
from tests.monitor.test_labels import T0, write_log

pytestmark = pytest.mark.unit


def test_labels_before_the_log_is_flushed_are_kept_and_match_later(tmp_path):
    store = tmp_path / "store"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"name": "rain", "store": str(store),
                                   "data": {"source": str(tmp_path / "unused.csv"), "label": "RainTomorrow"}}))
    log_dir = tmp_path / "first"
    write_log(log_dir, [("req-1", "3", [0.9], T0)])
    (store / "rain").mkdir(parents=True)
    (log_dir / "predlog").rename(store / "rain" / "predlog")
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"request_id": ["req-1", "req-2"], "RainTomorrow": [1, 0]}), labels)

    res = CliRunner().invoke(app, ["feedback", str(cfg), "--labels", str(labels)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "2 labels stored (key request_id)" in text
    assert ("1 label(s) name request_id values not in the prediction log (yet): stored all the same. Serving writes "
            "the log every monitor.predlog_flush_s (30 s) or monitor.predlog_flush_rows (1,000 rows) per replica, so "
            "labels sent right after the traffic find no prediction yet: they count once those rows are written") in text
    assert "version 3: 1 of 1 predictions labelled" in text

    write_log(tmp_path / "second", [("req-2", "3", [0.2], T0 + 5)])           # the replica flushes req-2
    for f in (tmp_path / "second" / "predlog").rglob("*.parquet"):
        dest = store / "rain" / "predlog" / f.relative_to(tmp_path / "second" / "predlog")
        dest.parent.mkdir(parents=True, exist_ok=True)
        f.rename(dest.with_name("later-" + dest.name))
    again = pa.table({"request_id": ["req-x"], "RainTomorrow": [1]})          # any later feedback run reports it
    pq.write_table(again, labels)
    time.sleep(1.1)               # label files are named by the second and the pid: one run per second here
    res = CliRunner().invoke(app, ["feedback", str(cfg), "--labels", str(labels)])
    assert "version 3: 2 of 2 predictions labelled" in " ".join(res.output.split()), res.output
