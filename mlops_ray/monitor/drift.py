"""Drift and data quality of a window of traffic against a model's reference profile.

In: a window — the prediction log between two times, or any dataset holding the model's
input columns — and the served version's bundle (its ``reference.json``: the raw-input
profile ``inputs`` and the prediction distribution). Out: a drift report (a JSON-able
dict; ``monitor/report.py`` renders it) with, per input column and for the prediction,
the statistic, its calibrated threshold and p-value, the effect size and a verdict, the
data-quality counts (nulls, values outside the schema's min/max, unseen categories), the
share of drifted columns and a domain classifier's multivariate score. A datetime input is
judged by the model's parts of it: cyclic parts per part, calendar positions apart
(``monitor/calendar.py``).

How: one Ray Data pass (``profile_pass``) bins every block of the window with the
reference's own layout; only the per-block counts reach the driver. Thresholds follow the
window's size (``monitor/stats.py``): the null distribution of each statistic is drawn at
the window's row count from the reference's bins, so a million-row window does not alarm
on noise and a hundred-row window does not alarm on sampling error.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from mlops_ray.config import Config, MonitorConfig, parse_duration
from mlops_ray.data import dates, ingest
from mlops_ray.data.features import FeatureSpec, frame, transform
from mlops_ray.data.profile import profile_pass
from mlops_ray.errors import MonitorError
from mlops_ray.monitor import calendar as C
from mlops_ray.monitor import reference as R
from mlops_ray.monitor import stats as S
from mlops_ray.registry import Registry
from mlops_ray.registry.bundle import predict_features
from mlops_ray.runtime import ray_runtime
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.fs import filesystem_for
from mlops_ray.storage.state import read_state, state_path
from mlops_ray.storage.store import Store
from mlops_ray.train import xgb as X
# Imported where used, for their import cost (python -X importtime): xgboost 1.4 s, scikit-learn 1.1 s, ray 0.7 s.

Progress = Callable[[str, str], None]
PREDICTION = "__prediction__"


def _noop(step: str, message: str) -> None:
    pass


# --------------------------------------------------------------------------- pure comparison
def _hist(lay: dict, counts: list) -> dict:
    if lay["kind"] == "numeric":
        e = lay["edges"]
        labels = [f"≤{e[0]:.4g}"] + [f"{a:.4g}–{b:.4g}" for a, b in zip(e, e[1:])] + [f">{e[-1]:.4g}"] if e else ["all"]
    else:
        labels = list(lay["categories"]) + [R.OTHER]
    total = max(sum(counts), 1)
    return {"labels": labels, "shares": [round(c / total, 6) for c in counts]}


def compare(reference: dict, window: dict, mon: MonitorConfig, *, seed: int = 0) -> dict:
    """Reference profile (``inputs`` + ``prediction``) vs merged window counts -> report body."""
    rng = np.random.default_rng(seed)
    cols = reference["inputs"]["columns"]
    testable = [n for n, lay in cols.items() if lay["kind"] in ("numeric", "categorical")]
    has_pred = PREDICTION in window and reference.get("prediction", {}).get("kind") in ("numeric", "categorical")
    m = len(testable) + (1 if has_pred else 0)
    alpha = S.bonferroni(mon.alpha, m) if mon.correction == "bonferroni" else mon.alpha
    draws = mon.null_draws or S.required_draws(alpha)
    features = []
    for name in testable:
        lay, win, note = cols[name], window.get(name), None
        if "field" in lay:       # a cyclic datetime part: judged over whole cycles of its field
            lay, win, note = C.cyclic_inputs(name, lay, win, cols.get(lay["field"]), window.get(lay["field"]))
        features.append(_judge_column(name, lay, win, mon, alpha, draws, rng, note))
    excluded = [C.calendar_entry(n, lay, window.get(n), mon) for n, lay in cols.items() if lay["kind"] == "calendar"]
    prediction = None
    if has_pred and reference["prediction"]["kind"] == "categorical":     # multiclass: the predicted class
        p = reference["prediction"]
        n_ref = int(p.get("n", 0)) or 1
        shares = [p["shares"].get(str(k), 0.0) for k in range(len(p["shares"]))]
        lay = {"kind": "categorical", "categories": list(reference.get("classes") or map(str, range(len(shares)))),
               "counts": [round(s * n_ref) for s in shares] + [0], "n": n_ref, "nulls": 0}
        prediction = _judge_column("prediction", lay, window[PREDICTION], mon, alpha, draws, rng)
    elif has_pred:
        p = reference["prediction"]
        n_ref = int(p.get("n", 0)) or 1
        bounded = reference.get("task", "binary") != "regression" and p["edges"] and 0 < p["edges"][0] < p["edges"][-1] < 1
        lay = {"kind": "numeric", "edges": p["edges"], "counts": [round(s * n_ref) for s in p["shares"]],
               "min": 0.0 if bounded else p["edges"][0], "max": 1.0 if bounded else p["edges"][-1],
               "std": p.get("std"), "n": n_ref, "nulls": 0}
        prediction = _judge_column("prediction", lay, window[PREDICTION], mon, alpha, draws, rng)
    judged = [f for f in features if f["verdict"] != "insufficient"]
    drifted = [f["name"] for f in judged if f["verdict"] == "drift"]
    quality = [f for f in features + excluded if f["quality"].get("flags")]
    return {"alpha": mon.alpha, "alpha_per_test": alpha, "method": mon.method, "null_draws": draws,
            "features": features, "prediction": prediction,
            "drifted": drifted, "drift_share": round(len(drifted) / len(judged), 4) if judged else 0.0,
            "insufficient": [f["name"] for f in features if f["verdict"] == "insufficient"],
            "quality_flags": {f["name"]: f["quality"]["flags"] for f in quality}, "excluded": excluded,
            "drift": bool(drifted) or bool(prediction and prediction["verdict"] == "drift")}


def _judge_column(name: str, lay: dict, win: dict | None, mon: MonitorConfig, alpha: float, draws: int, rng,
                  note: str | None = None) -> dict:
    kind = lay["kind"]
    win = win or {"n": 0, "nulls": 0, "counts": [0] * len(lay["counts"])}
    ref_c = np.asarray(lay["counts"], dtype=np.int64)
    win_c = np.asarray(win["counts"], dtype=np.int64)
    rows = int(win_c.sum())
    quality = _quality(lay, win, mon)
    entry = {"name": name, "kind": kind, "rows": rows, "quality": quality,
             "reference_hist": _hist(lay, ref_c.tolist()), "window_hist": _hist(lay, win_c.tolist())}
    if "field" in lay:
        entry.update({"field": lay["field"], "part": lay["part"]})
    min_effect = mon.effect_for(name, kind)
    if note and note.startswith("insufficient"):
        entry.update({"verdict": "insufficient", "statistic": None, "value": None, "threshold": None,
                      "p_value": None, "effect": None, "min_effect": min_effect, "tests": {}, "note": note})
        return entry
    if note:
        entry["note"] = note
    if rows < mon.min_rows or ref_c.sum() == 0:
        entry.update({"verdict": "insufficient", "statistic": None, "value": None, "threshold": None,
                      "p_value": None, "effect": None, "min_effect": min_effect, "tests": {},
                      "note": f"insufficient data: {rows} non-null rows in the window (monitor.min_rows "
                              f"{mon.min_rows})"})
        return entry
    if kind == "numeric":
        fixed = {"psi": mon.psi_threshold} if mon.method == "fixed" else None
        rep = S.numeric_report(ref_c, win_c, lay["edges"], lay.get("min"), lay.get("max"), win.get("min"),
                               win.get("max"), lay.get("std") or _binned_std(lay), alpha=alpha, min_effect=min_effect,
                               draws=draws, rng=rng, fixed=fixed)
    else:
        fixed = {"chi2_pvalue": mon.chi2_pvalue} if mon.method == "fixed" else None
        rep = S.categorical_report(ref_c, win_c, alpha=alpha, min_effect=min_effect, draws=draws, rng=rng,
                                   fixed=fixed)
    entry.update(rep)
    return entry


def _binned_std(lay: dict) -> float:
    """Spread of a binned distribution (mass at bin midpoints), when the profile has no std."""
    e = np.asarray(lay["edges"], dtype=np.float64)
    c = np.asarray(lay["counts"], dtype=np.float64)
    if e.size == 0 or c.sum() == 0:
        return 1.0
    lo, hi = lay.get("min", e[0]), lay.get("max", e[-1])
    bounds = np.concatenate([[min(lo, e[0])], e, [max(hi, e[-1])]])
    mid = (bounds[:-1] + bounds[1:]) / 2
    mean = (mid * c).sum() / c.sum()
    return float(np.sqrt(((mid - mean) ** 2 * c).sum() / c.sum())) or 1.0


def _quality(lay: dict, win: dict, mon: MonitorConfig) -> dict:
    n = int(win.get("n", 0))
    nulls = int(win.get("nulls", 0))
    ref_n = int(lay.get("n", 0)) or 1
    ref_null = lay.get("nulls", 0) / ref_n
    q = {"nulls": nulls, "null_rate": round(nulls / n, 6) if n else 0.0, "reference_null_rate": round(ref_null, 6),
         "out_of_range": int(win.get("out_of_range", 0)), "unseen": int(win.get("unseen", 0)),
         "unseen_values": win.get("unseen_values", []), "flags": []}
    if n and q["null_rate"] > ref_null + mon.max_null_rate_increase:
        q["flags"].append(f"null rate {q['null_rate']:.1%} vs {ref_null:.1%} in training")
    if q["out_of_range"]:
        q["flags"].append(f"{q['out_of_range']} values outside the schema's min/max")
    if q["unseen"]:
        q["flags"].append(f"{q['unseen']} values of categories never seen in training "
                          f"(e.g. {', '.join(map(str, q['unseen_values'][:3]))})")
    return q


# --------------------------------------------------------------------------- the window
def window_bounds(cfg: Config, since: str | None, window: str | None,
                  now: dt.datetime | None = None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``--since 2h`` (a duration back from now, or an ISO time) or ``--window START..END``;
    default the last ``monitor.window``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if window:
        if ".." not in window:
            raise MonitorError(f"--window {window!r} must look like START..END (ISO times, either may be empty)")
        a, b = window.split("..", 1)
        return _time(a, "--window") if a else None, _time(b, "--window") if b else None
    text = since or cfg.monitor.window
    try:
        return now - dt.timedelta(seconds=parse_duration(text)), None
    except ValueError:
        return _time(text, "--since"), None


def _time(text: str, flag: str) -> dt.datetime:
    try:
        t = dates.parse_iso(text.strip())
    except OverflowError:
        t = None
    if t is None:
        raise MonitorError(f"{flag} {text!r} is neither a duration (e.g. 2h, 7d) nor an ISO time "
                           "(e.g. 2026-03-01T00:00)")
    return t.replace(tzinfo=dt.timezone.utc)


def predlog_files(root_uri: str, since: dt.datetime | None, until: dt.datetime | None) -> tuple[object, list[str]]:
    """Parquet files of the prediction log whose hour partition overlaps [since, until)."""

    fs, root = filesystem_for(root_uri)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return fs, []
    lo = since.replace(minute=0, second=0, microsecond=0) if since else None
    files = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        parts = dict(p.split("=", 1) for p in info.path[len(root):].split("/") if "=" in p)
        if "date" in parts and "hour" in parts and (lo or until):
            try:
                hour = dt.datetime.fromisoformat(f"{parts['date']}T{int(parts['hour']):02d}:00").replace(
                    tzinfo=dt.timezone.utc)
            except ValueError:
                continue
            if (lo and hour < lo) or (until and hour >= until):
                continue
        if "/." in info.path[len(root):] or "/_" in info.path[len(root):]:     # hidden or temporary files
            continue
        files.append(info.path)
    return fs, sorted(files)


class _InWindow:
    """A block of the prediction log cut to ``since <= ts < until`` (picklable)."""

    def __init__(self, fn, since, until):
        self.fn, self.since, self.until = fn, since, until
        if hasattr(fn, "compact"):           # profile_pass folds such partials as they arrive
            self.compact = fn.compact

    def __call__(self, table: pa.Table):
        if "ts" in table.column_names and (self.since or self.until):
            ts = table.column("ts")
            mask = None
            if self.since:
                mask = pc.greater_equal(ts, pa.scalar(self.since, ts.type))
            if self.until:
                m2 = pc.less(ts, pa.scalar(self.until, ts.type))
                mask = m2 if mask is None else pc.and_(mask, m2)
            table = table.filter(mask)
        return self.fn(table)


class _Scored:
    """A partial that takes ``predictions`` (``count_partial``), given the block scored with one
    model version: ``monitor --data`` profiles that version's predictions on the window, not a column
    of the data that happens to be called ``prediction``. The booster is loaded once per worker."""

    def __init__(self, fn: functools.partial, model: bytes, spec: dict):
        self.fn, self.model, self.spec, self._loaded = fn, model, spec, None

    def __getstate__(self):
        return {**self.__dict__, "_loaded": None}

    def __call__(self, table: pa.Table):
        import xgboost as xgb

        if self._loaded is None:
            booster = xgb.Booster()
            booster.load_model(bytearray(self.model))
            self._loaded = booster, FeatureSpec.from_dict(self.spec)
        booster, spec = self._loaded
        p = predict_features(booster, transform(frame(table.select(list(spec.input_columns))), spec), spec) \
            if table.num_rows else np.empty(0)
        return self.fn(table, predictions=p)


def window_layout(columns: dict) -> dict:
    """What ``count_partial`` bins a window with, from the reference profile's columns (a calendar
    position brings training's range, to count the values outside it)."""
    out = {}
    for name, lay in columns.items():
        out[name] = {k: v for k, v in lay.items() if k in ("kind", "type", "edges", "categories", "field", "part")}
        if lay["kind"] == "calendar":
            out[name].update({"lo": lay.get("min"), "hi": lay.get("max")})
    return out


def schema_limits(cfg: Config) -> dict:
    return {c: (rule.min, rule.max) for c, rule in cfg.schema_.columns.items()
            if getattr(rule, "min", None) is not None or getattr(rule, "max", None) is not None}


def known_categories(spec) -> dict:
    return {f.name: set(f.vocab) for f in spec.categorical if f.name in spec.input_types}


# --------------------------------------------------------------------------- domain classifier
def domain_classifier(ref_X: np.ndarray, win_X: np.ndarray, names: list[str], types: list[str],
                      min_auc: float, seed: int = 0, folds: int = 3) -> dict:
    """XGBoost telling reference rows (0) from window rows (1): the cross-validated AUC is the
    multivariate drift score; gain importances say which features moved. The noise band of
    the AUC under no drift is about 0.5 ± 2.5 sd, sd = sqrt((n0 + n1 + 1) / (12 n0 n1))."""
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score
    n0, n1 = len(ref_X), len(win_X)
    if min(n0, n1) < 50:
        return {"auc": None, "threshold": None, "drifted": False, "top_features": [],
                "note": f"insufficient data: {min(n0, n1)} rows on one side"}
    X = np.vstack([ref_X, win_X]).astype(np.float32)
    y = np.concatenate([np.zeros(n0), np.ones(n1)])
    fold = np.random.default_rng(seed).integers(0, folds, X.shape[0])
    scores = np.empty(X.shape[0])
    gain: dict[str, float] = {}
    params = {"objective": "binary:logistic", "max_depth": 4, "eta": 0.2, "nthread": 2, "max_cat_to_onehot": 8,
              "verbosity": 0}
    for k in range(folds):
        tr, te = fold != k, fold == k
        d = xgb.DMatrix(X[tr], label=y[tr], feature_names=names, feature_types=types, enable_categorical=True)
        bst = xgb.train(params, d, 60)
        scores[te] = bst.predict(xgb.DMatrix(X[te], feature_names=names, feature_types=types,
                                             enable_categorical=True))
        for f, g in bst.get_score(importance_type="total_gain").items():
            gain[f] = gain.get(f, 0.0) + g
    auc = float(roc_auc_score(y, scores))
    sd = float(np.sqrt((n0 + n1 + 1) / (12.0 * n0 * n1)))
    threshold = max(min_auc, 0.5 + 2.5 * sd)
    total = sum(gain.values()) or 1.0
    top = sorted(((f, round(g / total, 4)) for f, g in gain.items()), key=lambda kv: -kv[1])[:10]
    return {"auc": round(auc, 4), "threshold": round(threshold, 4), "noise_sd": round(sd, 4),
            "drifted": auc > threshold, "top_features": [list(t) for t in top], "rows": [n0, n1]}


# --------------------------------------------------------------------------- the Ray-facing step
def run_monitor(cfg: Config, *, since: str | None = None, window: str | None = None, data: str | None = None,
                reference_data: str | None = None, ref: str | None = None, verbose: bool = False,
                progress: Progress = _noop, now: dt.datetime | None = None) -> dict:
    """Monitor the window; write the report to ``{store}/{name}/monitor/reports/``; return it.
    Raises MonitorError for an empty window, a log that does not match the model or a bundle
    without a reference profile; drift is a result (``report["drift"]``), not an error."""

    t0 = time.perf_counter()
    store = Store(cfg.store)
    registry = Registry(cfg.registry, cfg.store, cfg.name)
    version = registry.resolve(ref or _served_or_champion(cfg))
    bundle = registry.load_bundle(version)
    spec = bundle.spec
    since_t, until_t = (None, None) if data else window_bounds(cfg, since, window, now)
    with ray_runtime(cfg.ray, verbose=verbose):
        import ray

        reference = {**bundle.reference, "task": bundle.task, "classes": bundle.spec.classes}
        saved = Catalog(store, cfg.name).reference_profile(version)
        if reference_data:
            progress("reference", f"profiling {reference_data} as the reference of version {version}")
            reference["inputs"] = build_reference_from(cfg, spec, reference_data)
            store.write_json(saved, reference["inputs"])
        elif "inputs" not in reference and store.exists(saved):
            reference["inputs"] = store.read_json(saved)
        if "inputs" not in reference:
            raise MonitorError(
                f"version {version}'s bundle has no reference profile of its raw inputs (it was registered "
                f"before monitoring existed); build one from its training data with `mlops-ray monitor CONFIG "
                f"--reference-data PATH`")
        layout = window_layout(reference["inputs"]["columns"])
        known = {**known_categories(spec), **{n: set(lay["seen"]) for n, lay in reference["inputs"]["columns"].items()
                                              if lay.get("seen") is not None}}
        pred_edges = reference.get("prediction", {}).get("edges") if reference.get("prediction", {}).get(
            "kind") == "numeric" else None
        pred_classes = len(reference["prediction"]["shares"]) if reference.get("prediction", {}).get(
            "kind") == "categorical" else None
        count = functools.partial(R.count_partial, layout=layout, known=known, limits=schema_limits(cfg),
                      prediction_edges=pred_edges, prediction_classes=pred_classes)
        if data:
            dcfg = window_data_config(cfg, data)
            source = ingest.inspect_source(dcfg)
            missing = [c for c in spec.input_columns if c not in source.schema.names]
            if missing:
                raise MonitorError(f"{data} lacks the model's input column(s) {', '.join(missing)}; the window "
                                   f"must hold every column the model was trained on")
            ds = _parsed_dates(ingest.read_dataset(source, dcfg), spec)
            desc = {"source": "data", "path": data, "since": None, "until": None,
                    "prediction": f"the window scored with version {version}"}
            if pred_edges is not None or pred_classes:
                count = _Scored(count, bytes(bundle.booster.save_raw("ubj")), spec.to_dict())
        else:
            root = Catalog(store, cfg.name).predlog_dir()
            fs, files = predlog_files(root, since_t, until_t)
            desc = {"source": "predlog", "path": root, "since": since_t.isoformat() if since_t else None,
                    "until": until_t.isoformat() if until_t else None}
            if not files:
                raise MonitorError(f"no predictions in the window {_span(since_t, until_t)} under {root}: "
                                   f"nothing was served then (widen it with --since, e.g. --since 7d, or give "
                                   f"--data PATH)")
            _check_log_schema(fs, files, spec, root)
            ds = ray.data.read_parquet(files, filesystem=fs)
            count = _InWindow(count, since_t, until_t)
        progress("monitor", f"binning the window against version {version}'s reference in one Ray Data pass")
        fns = {"counts": count}
        n_sample = cfg.monitor.domain_classifier.sample_rows
        if cfg.monitor.domain_classifier.enabled:     # the window's sample comes from the same pass
            sample = WindowSample(n_sample, cfg.tune.seed, list(spec.input_columns), is_log=data is None)
            fns["sample"] = sample if data else _InWindow(sample, since_t, until_t)
        parts = profile_pass(ds, fns)
        counts = R.merge_counts(parts["counts"])
        rows = max((c.get("n", 0) for c in counts.values()), default=0)
        if rows == 0:
            raise MonitorError(f"the window {_span(since_t, until_t)} of {desc['path']} holds no rows; widen it "
                               f"(--since 7d) or send traffic first")
        desc["rows"] = rows
        report = compare(reference, counts, cfg.monitor, seed=cfg.tune.seed)
        report["excluded"] += C.missing_parts(spec, reference["inputs"]["columns"], version)
        report["multivariate"] = None
        if cfg.monitor.domain_classifier.enabled:
            progress("monitor", "domain classifier: reference rows vs window rows")
            fields = [d.name for d in spec.datetime]
            exclude = C.domain_exclusions(spec, {f: reference["inputs"]["columns"].get(f) for f in fields},
                                          {f: counts.get(f) for f in fields})
            report["multivariate"] = _domain(cfg, store, bundle, merge_sample(parts["sample"], n_sample), exclude)
    if report["multivariate"] and report["multivariate"].get("drifted"):
        report["drift"] = True
    report.update({"pipeline": cfg.name, "version": str(version), "window": desc,
                   "reference": {"rows": reference["inputs"].get("rows"), "version": str(version)},
                   "created": dt.datetime.now(dt.timezone.utc).isoformat(),
                   "seconds": round(time.perf_counter() - t0, 2)})
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    report["path"] = Catalog(store, cfg.name).report(stamp, uri=True)
    store.write_json(Catalog(store, cfg.name).report(stamp), report)
    store.write_json(Catalog(store, cfg.name).latest_report(), report)
    return report


def _parsed_dates(ds, spec):
    """A window's date-times stored as text, read with the formats the model was trained with
    (``data.datetime_formats`` or inferred at training), so their parts are profiled as training's were."""
    formats = getattr(spec, "datetime_formats", None) or {}
    if not formats:
        return ds
    return ds.map_batches(dates.parse_table, fn_kwargs={"formats": formats}, batch_format="pyarrow",
                          batch_size=None, zero_copy_batch=True)


def _span(a, b) -> str:
    return f"[{a.isoformat() if a else '…'}, {b.isoformat() if b else 'now'})"


def _served_or_champion(cfg: Config) -> str:
    try:
        st = read_state(state_path(cfg.store, cfg.name))
    except Exception:
        st = None
    return st.stable if st else "champion"


def _check_log_schema(fs, files: list[str], spec, root: str) -> None:
    with fs.open_input_file(files[-1]) as f:
        schema = pq.read_schema(f)
    if "inputs" not in schema.names or not pa.types.is_struct(schema.field("inputs").type):
        raise MonitorError(f"{files[-1]} is not a prediction log file (no 'inputs' struct column; columns: "
                           f"{', '.join(schema.names)}); move it out of {root}")
    fields = {schema.field("inputs").type.field(i).name for i in range(schema.field("inputs").type.num_fields)}
    missing = [c for c in spec.input_columns if c not in fields]
    if missing:
        raise MonitorError(f"the prediction log {files[-1]} does not match the model: its inputs lack "
                           f"{', '.join(missing)} (logged: {', '.join(sorted(fields))}); it was written by another "
                           f"model or pipeline — monitor a window served by this version (--since/--window)")


def window_data_config(cfg: Config, source):
    """``data`` for reading a window's inputs: ``source`` instead of the training data, and no label
    (traffic has none yet; a label expression's columns, e.g. an arrival delay, come later)."""
    return cfg.data.model_copy(update={"source": source, "label_expr": None, "unlabelled": "fail"})


def build_reference_from(cfg: Config, spec, path: str) -> dict:
    """The raw-input profile of every row of a dataset (for a bundle that predates profiles)."""
    dcfg = window_data_config(cfg, path)
    source = ingest.inspect_source(dcfg)
    ds = _parsed_dates(ingest.read_dataset(source, dcfg), spec)
    return R.profile_inputs(ds, spec.input_types, cfg.monitor, profile_pass, dt_parts=C.spec_parts(spec))


def _domain(cfg: Config, store, bundle, window: pa.Table | None, exclude: dict[str, str] | None = None) -> dict:
    """Model-input rows: a sample of the training split (read batch by batch) vs the window's sample
    (transformed as the model's inputs are), without the model columns in ``exclude`` (column ->
    why: calendar positions, cyclic parts the window does not cover once; ``monitor/calendar.py``)."""
    n = cfg.monitor.domain_classifier.sample_rows
    key = bundle.metadata.get("data_key")
    train_dir = Catalog(store, cfg.name).features_split(key, "train") if key else None
    if not train_dir or not store.exists(train_dir):
        return {"auc": None, "drifted": False, "top_features": [],
                "note": "the training split of this version is no longer in the store"}
    if window is None or not window.num_rows:
        return {"auc": None, "drifted": False, "top_features": [], "note": "no window rows sampled"}
    exclude = exclude or {}
    left_out = [[c, why] for c, why in exclude.items()]
    keep = [i for i, c in enumerate(bundle.spec.output_columns) if c not in exclude]
    if not keep:
        return {"auc": None, "drifted": False, "top_features": [], "excluded": left_out,
                "note": "every model input is a calendar position or a cycle the window does not cover"}
    names = [bundle.spec.output_columns[i] for i in keep]
    types = [bundle.spec.feature_types[i] for i in keep]
    win_X = transform(frame(window), bundle.spec)[names].to_numpy(np.float32)
    ref_X = X.sample_rows(train_dir, bundle.spec, n, seed=cfg.tune.seed, filesystem=store.fs)[:, keep]
    out = domain_classifier(ref_X, win_X, names, types, cfg.monitor.domain_classifier.min_auc, seed=cfg.tune.seed)
    return {**out, "excluded": left_out}


class WindowSample:
    """A seeded uniform sample of at most ``k`` rows of one block, as a partial of the binning pass
    (bottom-k: every row draws a key, a block keeps its k smallest, and ``merge_sample`` keeps the k
    smallest of all, which is a uniform sample of the whole window without a second read of it; the
    count, random_sample and iteration it replaces were three more Ray Data executions). A block's
    keys are seeded by the seed and the block's content, so the same window gives the same sample."""

    def __init__(self, k: int, seed: int, columns: list[str], is_log: bool = False):
        self.k, self.seed, self.columns, self.is_log = k, seed, columns, is_log

    def __call__(self, table: pa.Table) -> tuple[np.ndarray, pa.Table]:
        if self.is_log:          # the log holds the request's raw inputs as columns of their own
            cols = R.input_columns(table)
            table = pa.table({c: cols[c] for c in self.columns if c in cols})
        else:
            table = table.select([c for c in self.columns if c in table.column_names])
        n = table.num_rows
        keys = np.random.default_rng(_block_seed(self.seed, table)).random(n)
        if n > self.k:
            keep = np.sort(np.argpartition(keys, self.k)[:self.k])
            keys, table = keys[keep], table.take(keep)
        return keys, table

    def compact(self, parts: list[tuple[np.ndarray, pa.Table]]) -> tuple[np.ndarray, pa.Table]:
        return _bottom_k(parts, self.k)


def _block_seed(seed: int, table: pa.Table) -> int:
    n = table.num_rows
    edge = f"{seed}|{n}|{table.slice(0, 4).to_pylist()}|{table.slice(max(0, n - 4)).to_pylist()}"
    return int.from_bytes(hashlib.blake2b(edge.encode(), digest_size=8).digest(), "little")


def merge_sample(parts: list[tuple[np.ndarray, pa.Table]], k: int) -> pa.Table | None:
    keys, table = _bottom_k(parts, k)
    return table if table.num_rows else None


def _bottom_k(parts: list[tuple[np.ndarray, pa.Table]], k: int) -> tuple[np.ndarray, pa.Table]:
    """The k rows with the smallest keys over all partials (itself a partial: merging is associative)."""
    parts = [(keys, t) for keys, t in parts if t.num_rows]
    if not parts:
        return np.empty(0), pa.table({})
    keys = np.concatenate([keys for keys, _ in parts])
    table = pa.concat_tables([t for _, t in parts], promote_options="permissive")
    if table.num_rows > k:
        keep = np.sort(np.argpartition(keys, k)[:k])
        keys, table = keys[keep], table.take(keep)
    return keys, table
