"""Drift of a window against the raw-input reference profile: the pure half (partials, compare)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from mlops_ray.config import MonitorConfig
from mlops_ray.data.profile import profile_local
from mlops_ray.errors import MonitorError
from mlops_ray.monitor import drift as D
from mlops_ray.monitor import reference as R
from tests.support.configs import make_config

pytestmark = pytest.mark.unit

TYPES = {"amount": "float", "num_txn_24h": "int", "channel": "string", "device": "string"}


def _profile(df, mon=MonitorConfig()):
    t = pa.Table.from_pandas(df, preserve_index=False)
    return R.profile_inputs(t, TYPES, mon, lambda tab, fns: profile_local(tab, fns, batch_rows=1500))


def _window(profile, df, known=None, limits=None):
    lay = {n: {k: v for k, v in c.items() if k in ("kind", "type", "edges", "categories")}
           for n, c in profile["columns"].items()}
    t = pa.Table.from_pandas(df, preserve_index=False)
    return R.merge_counts(profile_local(t, {"c": lambda b: R.count_partial(b, lay, known, limits)},
                                        batch_rows=700)["c"])


@pytest.fixture(scope="module")
def world():
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    df = generate_chunk(SynthSpec(rows=12000, seed=5), 0, 12000)
    return df.iloc[:6000].reset_index(drop=True), df.iloc[6000:].reset_index(drop=True)


def test_reference_profile_counts_every_training_row(world):
    ref, _ = world
    prof = _profile(ref)
    amount = prof["columns"]["amount"]
    assert sum(amount["counts"]) + amount["nulls"] == len(ref)
    assert len(amount["counts"]) == len(amount["edges"]) + 1
    assert prof["columns"]["channel"]["kind"] == "categorical"
    assert sum(prof["columns"]["channel"]["counts"]) == ref["channel"].notna().sum()


def test_same_distribution_no_drift(world):
    ref, win = world
    prof = _profile(ref)
    rep = D.compare({"inputs": prof}, _window(prof, win), MonitorConfig())
    assert not rep["drift"], [(f["name"], f["p_value"], f["effect"]) for f in rep["features"]]
    assert rep["drift_share"] == 0.0


def test_shifted_numeric_and_category_drift(world):
    ref, win = world
    prof = _profile(ref)
    moved = win.copy()
    moved["amount"] = moved["amount"] * 1.6
    moved["channel"] = moved["channel"].where(np.arange(len(moved)) % 3 != 0, "atm")
    rep = D.compare({"inputs": prof}, _window(prof, moved), MonitorConfig())
    verdicts = {f["name"]: f["verdict"] for f in rep["features"]}
    assert verdicts["amount"] == "drift" and verdicts["channel"] == "drift"
    assert verdicts["device"] == "ok"
    assert set(rep["drifted"]) == {"amount", "channel"} and rep["drift_share"] == 0.5


def test_window_too_small_is_insufficient_not_drift(world):
    ref, win = world
    prof = _profile(ref)
    rep = D.compare({"inputs": prof}, _window(prof, win.iloc[:40]),
                    MonitorConfig(min_rows=100))
    assert not rep["drift"]
    assert set(rep["insufficient"]) == set(TYPES)
    assert "insufficient data: " in rep["features"][0]["note"]


def test_quality_counts_out_of_range_and_unseen(world):
    ref, win = world
    prof = _profile(ref)
    bad = win.iloc[:500].copy()
    bad.loc[:9, "amount"] = -5.0
    bad["channel"] = bad["channel"].astype(object)
    bad.loc[:4, "channel"] = "kiosk"
    counts = _window(prof, bad, known={"channel": {"online", "in_store", "atm"}}, limits={"amount": (0, None)})
    rep = D.compare({"inputs": prof}, counts, MonitorConfig())
    q = {f["name"]: f["quality"] for f in rep["features"]}
    assert q["amount"]["out_of_range"] == 10
    assert q["channel"]["unseen"] == 5 and q["channel"]["unseen_values"] == ["kiosk"]
    assert "10 values outside the schema's min/max" in q["amount"]["flags"][0]
    assert "categories never seen in training (e.g. kiosk)" in q["channel"]["flags"][0]


def test_prediction_log_batches_are_read_from_the_inputs_struct(world):
    ref, win = world
    prof = _profile(ref)
    inputs = pa.Table.from_pandas(win[list(TYPES)], preserve_index=False)
    log = pa.table({"request_id": pa.array([str(i) for i in range(len(win))]),
                    "inputs": pa.StructArray.from_arrays([c.combine_chunks() for c in inputs.columns], names=inputs.column_names),
                    "prediction": pa.array(np.linspace(0.01, 0.9, len(win)))})
    lay = {n: {k: v for k, v in c.items() if k in ("kind", "type", "edges", "categories")}
           for n, c in prof["columns"].items()}
    c = R.count_partial(log, lay, prediction_edges=[0.1, 0.5])
    assert sum(c["amount"]["counts"]) + c["amount"]["nulls"] == len(win)
    assert sum(c["__prediction__"]["counts"]) == len(win)


@pytest.mark.parametrize("since,window,message", [
    (None, "2026-01-01", "must look like START..END"),
    ("yesterday", None, "is neither a duration (e.g. 2h, 7d) nor an ISO time"),
    (None, "2026-13-01..", "--window '2026-13-01' is neither a duration"),
])
def test_window_bounds_bad_input(since, window, message):
    with pytest.raises(MonitorError, match=message.replace("(", r"\(").replace(")", r"\)")):
        D.window_bounds(make_config("x"), since, window)


def test_window_bounds():
    now = dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc)
    assert D.window_bounds(make_config("x"), "2h", None, now) == (now - dt.timedelta(hours=2), None)
    a, b = D.window_bounds(make_config("x"), None, "2026-02-01..2026-02-02T06:00", now)
    assert a.day == 1 and b.hour == 6 and b.tzinfo is not None


def test_domain_classifier_finds_the_moved_feature():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2000, 3))
    win = rng.normal(size=(2000, 3))
    win[:, 1] += 1.0
    out = D.domain_classifier(ref, win, ["a", "b", "c"], ["q", "q", "q"], 0.6)
    assert out["drifted"] and out["top_features"][0][0] == "b"
    same = D.domain_classifier(ref, rng.normal(size=(2000, 3)), ["a", "b", "c"], ["q", "q", "q"], 0.6)
    assert not same["drifted"] and abs(same["auc"] - 0.5) < 0.05


def test_unseen_means_never_seen_in_training_not_rare(world):
    ref, win = world
    ref = ref.copy()
    ref["device"] = ref["device"].astype(object)
    ref.loc[:2, "device"] = "kiosk"                       # rare in training, but seen
    prof = _profile(ref)
    assert "kiosk" in prof["columns"]["device"]["seen"]
    w = win.iloc[:300].copy()
    w["device"] = w["device"].astype(object)
    w.loc[:9, "device"] = "kiosk"
    w.loc[10:11, "device"] = "fridge"
    seen = {n: set(c["seen"]) for n, c in prof["columns"].items() if c.get("seen") is not None}
    q = {f["name"]: f["quality"] for f in D.compare({"inputs": prof}, _window(prof, w, known=seen),
                                                    MonitorConfig())["features"]}
    assert q["device"]["unseen"] == 2 and q["device"]["unseen_values"] == ["fridge"]


def test_merged_spread_keeps_precision_for_a_large_mean():
    rng = np.random.default_rng(1)
    x = 1e8 + rng.normal(size=200_000)
    t = pa.table({"v": x})
    lay = R.merge_layout([R.sketch_partial(t, {"v": "float"})], {"v": "float"}, 10, 10)
    parts = [R.count_partial(t.slice(i, 50_000), lay) for i in range(0, 200_000, 50_000)]
    assert R.merge_counts(parts)["v"]["std"] == pytest.approx(x.std(), rel=1e-3)


def test_the_window_sample_is_uniform_bounded_and_the_same_for_the_same_window():
    """The domain classifier's window rows come from the binning pass (bottom-k per block, merged):
    at most k rows, every row as likely as any other whatever the block sizes, and the same
    window gives the same sample."""
    n, k = 6000, 600
    t = pa.table({"amount": np.arange(n, dtype=np.float64), "channel": ["a", "b", "c"] * (n // 3),
                  "label": np.zeros(n)})
    sampler = D.WindowSample(k, seed=3, columns=["amount", "channel"])

    def sample(batch_rows):
        return D.merge_sample(profile_local(t, {"s": sampler}, batch_rows=batch_rows)["s"], k)

    s = sample(1000)
    assert s.num_rows == k and s.column_names == ["amount", "channel"]       # the label is not taken
    assert s.equals(sample(1000))
    assert len(set(s.column("amount").to_pylist())) == k                     # without replacement
    hits = np.zeros(n)
    for seed in range(40):
        parts = profile_local(t, {"s": D.WindowSample(k, seed, ["amount"])}, batch_rows=[700, 2500][seed % 2])
        hits[np.asarray(D.merge_sample(parts["s"], k).column("amount"), int)] += 1
    # each row in about 40 * k / n = 4 samples; by sixths of the data (blocks of unequal size) within 10 %
    sixths = hits.reshape(6, -1).sum(axis=1)
    assert np.all(np.abs(sixths / sixths.mean() - 1) < 0.1), sixths
    # profile_pass folds a long list of partials as they arrive: folding changes nothing
    parts = profile_local(t, {"s": sampler}, batch_rows=200)["s"]
    folded = [sampler.compact(parts[:16])] + parts[16:]
    assert folded[0][1].num_rows == k and D.merge_sample(folded, k).equals(D.merge_sample(parts, k))
    assert D.merge_sample([], k) is None
    small = D.merge_sample(profile_local(t.slice(0, 50), {"s": sampler})["s"], k)
    assert small.num_rows == 50


def test_the_window_sample_reads_a_prediction_logs_inputs():
    inputs = pa.StructArray.from_arrays([pa.array([1.0, 2.0, 3.0]), pa.array(["x", "y", "z"])],
                                        names=["amount", "channel"])
    log = pa.table({"ts": pa.array([1, 2, 3], pa.timestamp("us")), "inputs": inputs,
                    "prediction": [0.1, 0.2, 0.3]})
    keys, t = D.WindowSample(10, 0, ["amount", "channel"], is_log=True)(log)
    assert t.column_names == ["amount", "channel"] and t.num_rows == 3 and len(keys) == 3
