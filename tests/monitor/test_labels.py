"""The live metric: prediction log x late labels, per version."""
from __future__ import annotations

import math
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from mlops_ray.errors import ServingError
from mlops_ray.monitor.labels import live_metric
from mlops_ray.monitor.predlog import PredictionLog

pytestmark = pytest.mark.unit

T0 = 1_772_000_000.0            # 2026-02-25, epoch seconds
STABLE, CANARY = "3", "4"


def write_log(tmp_path, requests, multiclass=False) -> str:
    """requests: [(request_id, version, [prediction per row], ts)] -> the log root, flushed."""
    root = str(tmp_path / "predlog")
    lg = PredictionLog(root, {"amount": "float"}, owner="replica-1", spool_dir=str(tmp_path / "spool"),
                       flush_rows=10**9, flush_s=3600.0, multiclass=multiclass)
    for rid, version, preds, ts in requests:
        lg.append(rid, version, [{"amount": float(i)} for i in range(len(preds))], preds, ts=ts)
    assert lg.flush() == sum(len(r[2]) for r in requests)
    lg.close()
    return root


def write_labels(path, columns: dict, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), str(path))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def labels_dir(tmp_path):
    return tmp_path / "labels"


def run(tmp_path, root, **kw):
    kw.setdefault("task", "binary")
    kw.setdefault("since", T0 - 10)
    return live_metric(root, str(labels_dir(tmp_path)), kw.pop("label", "is_fraud"), kw.pop("task"), STABLE, CANARY,
                       kw.pop("since"), **kw)


# ---------------------------------------------------------------- binary AUC

def test_auc_per_version_matches_sklearn(tmp_path):
    rng = random.Random(7)
    requests, truth = [], {}
    for i in range(300):
        version = STABLE if i % 3 else CANARY
        n_rows = 1 + (i % 3 == 1) * 2                       # some requests carry 3 rows
        preds = []
        for r in range(n_rows):
            y = rng.random() < 0.4
            truth[(f"req-{i}", r)] = int(y)
            skill = 0.35 if version == STABLE else 0.15      # stable separates the classes better
            preds.append(min(1.0, max(0.0, rng.gauss(0.5 + (skill if y else -skill), 0.25))))
        requests.append((f"req-{i}", version, preds, T0 + i))
    root = write_log(tmp_path, requests)

    keys = sorted(truth)
    labeled = [k for j, k in enumerate(keys) if j % 5]           # a fifth never gets a label
    a_keys, b_keys = labeled[: len(labeled) // 2], labeled[len(labeled) // 2:]
    flipped = a_keys[3]
    # file A (older): a duplicate row for `flipped` — its last row carries the wrong label first, then
    # the right one; one null label (dropped); a label for a request that was never logged
    a_rows = a_keys + [flipped, ("ghost", 0), b_keys[0]]
    a_label = [truth[k] for k in a_keys] + [1 - truth[flipped], 1, None]
    a_rows.append(flipped)
    a_label.append(truth[flipped])
    write_labels(labels_dir(tmp_path) / "date=2026-02-25" / "a.parquet",
                 {"request_id": [k[0] for k in a_rows], "row": pa.array([k[1] for k in a_rows], pa.int32()),
                  "is_fraud": pa.array(a_label, pa.int64())}, mtime=T0 + 1000)
    # file B (newer): extra columns, bool labels; it relabels a key of A (the newer file wins)
    relabel = a_keys[10]
    truth[relabel] = 1 - truth[relabel]
    b_all = b_keys + [relabel]
    write_labels(labels_dir(tmp_path) / "b.parquet",
                 {"note": ["x"] * len(b_all), "request_id": [k[0] for k in b_all],
                  "is_fraud": [bool(truth[k]) for k in b_all], "row": [k[1] for k in b_all],
                  "amount": [1.5] * len(b_all)}, mtime=T0 + 2000)
    # neither hidden nor underscored files are read (they are not even Parquet)
    (labels_dir(tmp_path) / ".b.parquet.tmp").write_text("partial")
    (labels_dir(tmp_path) / "_SUCCESS").write_text("")

    got = run(tmp_path, root)

    pred = {(rid, r): (v, p) for rid, v, ps, _ in requests for r, p in enumerate(ps)}
    expected, rows = {}, {}
    for version in (STABLE, CANARY):
        ks = [k for k in labeled if pred[k][0] == version]
        rows[version] = len(ks)
        expected[version] = roc_auc_score([truth[k] for k in ks], [pred[k][1] for k in ks])
    assert got["name"] == "auc" and got["higher_is_better"] is True
    assert got["rows"] == rows and rows[CANARY] >= 50
    assert got["stable"] == pytest.approx(expected[STABLE], abs=1e-12)
    assert got["canary"] == pytest.approx(expected[CANARY], abs=1e-12)
    assert got["stable"] > got["canary"]


def test_too_few_labels_gives_none_for_that_version(tmp_path):
    requests = [(f"s{i}", STABLE, [0.9 if i % 2 else 0.1], T0 + i) for i in range(80)]
    requests += [(f"c{i}", CANARY, [0.5], T0 + i) for i in range(80)]
    root = write_log(tmp_path, requests)
    ids = [f"s{i}" for i in range(80)] + [f"c{i}" for i in range(10)]
    write_labels(labels_dir(tmp_path) / "l.parquet",
                 {"request_id": ids, "is_fraud": [i % 2 for i in range(80)] + [0, 1] * 5})
    got = run(tmp_path, root)
    assert got["stable"] == 1.0 and got["canary"] is None
    assert got["rows"] == {STABLE: 80, CANARY: 10}
    assert run(tmp_path, root, min_rows=10)["canary"] == 0.5


def test_no_labels_gives_none(tmp_path):
    root = write_log(tmp_path, [(f"r{i}", STABLE, [0.5], T0 + i) for i in range(60)])
    assert run(tmp_path, root) is None                                     # no labels directory
    labels_dir(tmp_path).mkdir()
    assert run(tmp_path, root) is None                                     # empty
    write_labels(labels_dir(tmp_path) / "l.parquet", {"request_id": ["other"], "is_fraud": [1]})
    assert run(tmp_path, root) is None                                     # labels for other requests only
    write_labels(labels_dir(tmp_path) / "l.parquet", {"request_id": ["r1"], "is_fraud": pa.array([None], pa.int64())})
    assert run(tmp_path, root) is None                                     # null labels only
    assert live_metric(str(tmp_path / "no-log"), str(labels_dir(tmp_path)), "is_fraud", "binary", STABLE, CANARY,
                       0.0) is None                                        # no log at all


def test_single_class_gives_none(tmp_path):
    requests = [(f"s{i}", STABLE, [i / 100], T0 + i) for i in range(60)]
    requests += [(f"c{i}", CANARY, [i / 100], T0 + i) for i in range(60)]
    root = write_log(tmp_path, requests)
    write_labels(labels_dir(tmp_path) / "l.parquet",
                 {"request_id": [f"s{i}" for i in range(60)] + [f"c{i}" for i in range(60)],
                  "is_fraud": [int(i >= 30) for i in range(60)] + [0] * 60})
    got = run(tmp_path, root)
    assert got["stable"] == 1.0 and got["canary"] is None
    assert got["rows"] == {STABLE: 60, CANARY: 60}


# ---------------------------------------------------------------- regression, multiclass

def test_regression_rmse(tmp_path):
    rng = np.random.default_rng(3)
    y = rng.normal(100, 20, 120)
    ps = y + rng.normal(0, 5, 120)
    pc_ = y + rng.normal(0, 9, 120)
    requests = [(f"r{i}", STABLE, [float(ps[i])], T0 + i) for i in range(120)]
    requests += [(f"q{i}", CANARY, [float(pc_[i])], T0 + i) for i in range(120)]
    root = write_log(tmp_path, requests)
    write_labels(labels_dir(tmp_path) / "part-0.parquet",
                 {"request_id": [f"r{i}" for i in range(120)] + [f"q{i}" for i in range(120)],
                  "price": np.concatenate([y, y])})
    got = run(tmp_path, root, task="regression", label="price")
    assert got["name"] == "rmse" and got["higher_is_better"] is False
    assert got["stable"] == pytest.approx(math.sqrt(np.mean((ps - y) ** 2)), rel=1e-12)
    assert got["canary"] == pytest.approx(math.sqrt(np.mean((pc_ - y) ** 2)), rel=1e-12)
    assert got["rows"] == {STABLE: 120, CANARY: 120}


def test_multiclass_accuracy_of_argmax(tmp_path):
    requests = [(f"r{i}", STABLE if i < 60 else CANARY,
                 [[0.1, 0.7, 0.2] if i % 3 else [0.6, 0.3, 0.1]], T0 + i) for i in range(120)]
    root = write_log(tmp_path, requests, multiclass=True)
    # stable: right on every row; canary: right only where the argmax (1) matches
    labels = [1 if i % 3 else 0 for i in range(60)] + [1] * 60
    write_labels(labels_dir(tmp_path) / "l.parquet", {"request_id": [f"r{i}" for i in range(120)], "kind": labels})
    got = run(tmp_path, root, task="multiclass", label="kind")
    assert got["name"] == "accuracy" and got["higher_is_better"] is True
    assert got["stable"] == 1.0 and got["canary"] == pytest.approx(40 / 60)


def test_multiclass_labels_by_class_name_are_matched_per_version(tmp_path):
    # a retrained version may know other classes, in another order: code 1 is "b" to one, "c" to the other
    requests = [(f"r{i}", STABLE if i < 60 else CANARY, [[0.1, 0.7, 0.2]], T0 + i) for i in range(120)]
    root = write_log(tmp_path, requests, multiclass=True)
    names = ["b"] * 50 + ["zebra"] * 10 + ["c"] * 60           # 'zebra': a class neither version knows
    write_labels(labels_dir(tmp_path) / "l.parquet", {"request_id": [f"r{i}" for i in range(120)], "kind": names})
    got = run(tmp_path, root, task="multiclass", label="kind",
              classes={STABLE: ["a", "b", "c"], CANARY: ["b", "c", "d"]})
    assert got["stable"] == pytest.approx(50 / 60) and got["canary"] == 1.0
    assert got["rows"] == {STABLE: 60, CANARY: 60}


def test_multiclass_class_names_without_the_versions_classes_are_refused(tmp_path):
    root = write_log(tmp_path, [(f"r{i}", STABLE, [[0.2, 0.8]], T0 + i) for i in range(5)], multiclass=True)
    write_labels(labels_dir(tmp_path) / "l.parquet", {"request_id": ["r1", "r2"], "kind": ["cat", "1"]})
    with pytest.raises(ServingError, match=r"\['cat'\] are not classes of this model, and its class names are "
                                           r"not known here; give the class as the training data spelled it"):
        run(tmp_path, root, task="multiclass", label="kind")


# ---------------------------------------------------------------- errors, time window

def test_missing_label_column_raises(tmp_path):
    root = write_log(tmp_path, [(f"r{i}", STABLE, [0.5], T0 + i) for i in range(5)])
    write_labels(labels_dir(tmp_path) / "l.parquet", {"request_id": ["r1"], "fraud": [1]})
    with pytest.raises(ServingError) as ei:
        run(tmp_path, root)
    msg = str(ei.value)
    assert "'is_fraud'" in msg and str(labels_dir(tmp_path)) in msg and "data.label" in msg


def test_binary_labels_must_be_0_1(tmp_path):
    root = write_log(tmp_path, [(f"r{i}", STABLE, [0.5], T0 + i) for i in range(5)])
    write_labels(labels_dir(tmp_path) / "l.parquet", {"request_id": ["r1", "r2"], "is_fraud": [1, 2]})
    with pytest.raises(ServingError, match="0/1"):
        run(tmp_path, root)


def test_since_excludes_older_predictions(tmp_path):
    old, new = T0 - 7200, T0                                    # two hours apart: another hour partition
    # two hours before `since` the stable version answered other requests, all wrongly
    requests = [(f"o{i}", STABLE, [1.0 - (i % 2)], old + i) for i in range(60)]
    requests += [(f"n{i}", STABLE, [float(i % 2)], new + i) for i in range(60)]
    requests += [(f"c{i}", CANARY, [float(i % 2)], new + i) for i in range(60)]
    root = write_log(tmp_path, requests)
    write_labels(labels_dir(tmp_path) / "l.parquet",
                 {"request_id": [f"{p}{i}" for p in "onc" for i in range(60)],
                  "is_fraud": [i % 2 for i in range(60)] * 3})
    got = run(tmp_path, root, since=new)
    assert got["stable"] == 1.0 and got["rows"] == {STABLE: 60, CANARY: 60}
    everything = run(tmp_path, root, since=old)
    assert everything["rows"][STABLE] == 120 and everything["stable"] == pytest.approx(0.5)
    assert run(tmp_path, root, since=new + 3600) is None


def test_label_files_with_other_types_and_resent_request_ids(tmp_path):
    requests = [(str(1000 + i), STABLE, [float(i % 2)], T0 + i) for i in range(60)]
    requests.append(("1003", STABLE, [0.0], T0 + 100))       # a resent id: the first record counts
    requests += [(str(2000 + i), CANARY, [float(i % 2)], T0 + i) for i in range(60)]
    root = write_log(tmp_path, requests)
    write_labels(labels_dir(tmp_path) / "a" / "x.parquet",
                 {"request_id": pa.array([1000 + i for i in range(60)], pa.int64()),
                  "is_fraud": [bool(i % 2) for i in range(60)]}, mtime=T0)
    write_labels(labels_dir(tmp_path) / "b" / "y.parquet",
                 {"request_id": [str(2000 + i) for i in range(60)], "row": pa.array([0] * 60, pa.int16()),
                  "is_fraud": pa.array([float(i % 2) for i in range(60)])}, mtime=T0 + 1)
    got = run(tmp_path, root)
    assert got == {"name": "auc", "stable": 1.0, "canary": 1.0, "higher_is_better": True,
                   "rows": {STABLE: 60, CANARY: 60}}


def test_labels_by_id_column_when_some_requests_lack_the_id(tmp_path):
    """feedback keyed by data.id_column: requests without the id were filtered before positions were
    taken (ArrowIndexError: index out of bounds)."""
    from mlops_ray.monitor.labels import _ids_to_requests
    root = str(tmp_path / "predlog")
    lg = PredictionLog(root, {"transaction_id": "int", "amount": "float"}, owner="replica-1",
                       spool_dir=str(tmp_path / "spool"), flush_rows=10**9, flush_s=3600.0)
    expected = {}
    for i in range(40):
        has_id = i % 3 != 0                                   # every third request came without the id
        rows = [{"amount": float(i), **({"transaction_id": 1000 + 2 * i + r} if has_id else {})} for r in range(2)]
        lg.append(f"req-{i}", STABLE, rows, [0.1, 0.9], ts=T0 + i)
        if has_id:
            expected.update({str(1000 + 2 * i + r): (f"req-{i}", r) for r in range(2)})
    lg.flush()
    lg.close()
    ids = sorted(expected, reverse=True) + ["777"]           # one id no request carried
    rid, row = _ids_to_requests(root, "transaction_id", pa.array(ids), pa.array(np.zeros(len(ids), np.int64)))
    got = dict(zip(ids, zip(rid.to_pylist(), row.to_pylist())))
    assert got.pop("777") == ("777", 0)
    assert got == expected
