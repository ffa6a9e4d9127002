"""The monitoring report: one self-contained HTML page.

In: ``ctx``, a dict of plain JSON-able pieces, each optional (a missing or None key renders a
short "not available" line):

- ``pipeline`` (str), ``generated`` (ISO time string);
- ``model``: {name, version, aliases, run_id, task, metrics: {name: float}, gate: GateDecision.to_dict()};
- ``validation``: ValidationReport.to_dict();  ``tuning``: SearchResult.to_dict();
- ``importance``: {feature: gain};  ``curves``: {"roc": roc_points(), "pr": pr_points()};
- ``drift``: a drift report (window, reference, per-feature tests and histograms, prediction, multivariate);
- ``drift_windows``: the recent drift checks, newest first, each {created, source, path, since, until, rows,
  version, drift, drift_share, drifted, auc} (``reports.drift_windows``);
- ``rollout``: ServingState.to_dict() (its ``history`` events draw the canary timeline);
- ``decisions``: retrain decisions [{time, trigger, reasons, action, run_id, version, outcome, error}].

Out: ``render_report(ctx)`` returns an HTML string; ``write_report(ctx, path)`` writes it.
Pure: no network, no Ray. Figures are matplotlib (Agg) PNGs inlined as base64 data URIs, CSS
is inline, there are no scripts and no external URLs; every string from ``ctx`` is escaped.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
import math
import os

from mlops_ray.data.dates import parse_iso
from mlops_ray.train import plots
# Imported where used, for their import cost (python -X importtime): matplotlib 0.5 s.

log = logging.getLogger(__name__)

MAX_DRIFT_HISTOGRAMS = 12
VERDICT_COLOR = {"drift": "#c62828", "ok": "#2e7d32", "insufficient": "#757575"}

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#222}
main{max-width:1180px;margin:0 auto;padding:24px}
header{background:#1f2937;color:#f9fafb;padding:18px 24px}
header h1{margin:0 0 4px;font-size:22px}
header .sub{color:#cbd5e1;font-size:13px}
section{background:#fff;border:1px solid #e2e5e9;border-radius:8px;padding:16px 20px;margin:0 0 18px}
h2{font-size:17px;margin:0 0 10px;border-bottom:1px solid #eee;padding-bottom:6px}
h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px}
th,td{border-bottom:1px solid #eceef1;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f8f9fb;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.kv td:first-child{color:#555;font-weight:600}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.pass{background:#2e7d32}.fail{background:#c62828}.muted{background:#757575}
.na{color:#777;font-style:italic}
.flag{color:#b45309;font-size:11.5px}
.small{font-size:11.5px;color:#555}
.row{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.figs img,img.fig{max-width:100%;border:1px solid #eee;border-radius:4px}
ul.tight{margin:2px 0;padding-left:18px}
footer{color:#888;font-size:12px;text-align:center;padding:10px}
"""


class _Raw(str):
    """HTML made here (already escaped); table cells of any other type are escaped."""


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


def _num(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and math.isnan(v):
            return "NaN"
        if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
            v = int(v)                  # a count stored as a float (rows 10000.0): 10,000, not 1e+04
        return f"{v:.{digits}g}" if isinstance(v, float) else f"{v:,}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str, separators=(", ", ": "))
    return str(v)


def _cell(v) -> str:
    if isinstance(v, _Raw):
        return f"<td>{v}</td>"
    num = isinstance(v, (int, float)) and not isinstance(v, bool)
    return f'<td{" class=num" if num else ""}>{_e(_num(v))}</td>'


def _table(headers: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv(pairs: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td>{v if isinstance(v, _Raw) else f'<td>{_e(_num(v))}</td>'}</tr>"
                   for k, v in pairs)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _badge(ok, yes: str = "passed", no: str = "failed") -> _Raw:
    if ok is None:
        return _Raw('<span class="badge muted">unknown</span>')
    return _Raw(f'<span class="badge {"pass" if ok else "fail"}">{_e(yes if ok else no)}</span>')


def _verdict(v) -> _Raw:
    color = VERDICT_COLOR.get(v, "#757575")
    return _Raw(f'<span class="badge" style="background:{color}">{_e(v or "–")}</span>')


def _ul(items) -> _Raw:
    return _Raw('<ul class="tight">' + "".join(f"<li>{_e(i)}</li>" for i in items or []) + "</ul>")


def _row(*blocks: str) -> str:
    return '<div class="row">' + "".join(f"<div>{b}</div>" for b in blocks if b) + "</div>"


def _img(fig, alt: str) -> str:
    """Encode a figure as an inline PNG and close it (this runs in long-lived processes)."""
    plt = plots._plt()
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="fig" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _when(t) -> str:
    """An epoch (float) or ISO string as a readable UTC time."""
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "–" if t is None else str(t)


def _na(what: str) -> str:
    return f'<p class="na">{_e(what)} not available.</p>'


# --------------------------------------------------------------------------- sections
def _threshold_history(history: list[dict]) -> str:
    """The decision threshold's history (thresholds.py), newest first; nothing until it was re-chosen."""
    if len(history) < 2:
        return ""
    rows = [[_when(e.get("time")) if e.get("time") else "registration", e.get("source"), e.get("value"),
             e.get("rule"), e.get("rows"), e.get("positive_rate"), (e.get("metrics") or {}).get("recall"),
             "kept: " + str(e.get("reason")) if e.get("kept") else "re-chosen" if e.get("time") else "chosen"]
            for e in reversed(history)]
    return (f"<h3>Decision threshold: {history[-1]['value']:.4f} now, re-chosen on the most recent labels</h3>"
            + _table(["when", "source", "threshold", "rule", "rows", "positive rate", "recall", "outcome"], rows))


def _model(m: dict) -> str:
    aliases = ", ".join(str(a) for a in m.get("aliases") or []) or "–"
    info = _kv([("model", m.get("name")), ("version", m.get("version")), ("aliases", aliases),
                ("run id", m.get("run_id")), ("task", m.get("task")),
                *([("decision threshold", f"{m['threshold']['value']:.4f} ({m['threshold'].get('rule')})")]
                  if (m.get("threshold") or {}).get("value") is not None else [])])
    metrics = m.get("metrics") or {}
    table = _table(["test metric", "value"], [[k, v] for k, v in metrics.items()]) if metrics else ""
    out = _row(info, table)
    if m.get("confusion"):
        out += _confusion(m["confusion"])
    out += _threshold_history(m.get("threshold_history") or [])
    gate = m.get("gate")
    if gate is None:
        return out + _na("Gate decision")
    out += f"<h3>Gate {_badge(gate.get('passed'))}</h3>"
    if gate.get("champion_version") is not None:
        out += f'<p class="small">compared with champion version {_e(gate["champion_version"])}</p>'
    checks = gate.get("checks") or []
    if checks:
        out += _table(["check", "metric", "observed", "threshold", "result", "message"],
                      [[c.get("check"), c.get("metric"), c.get("observed"), c.get("threshold"),
                        _Raw('<span class="badge muted">skipped</span>') if c.get("skipped")
                        else _badge(c.get("passed"), "ok", "fail"), c.get("message")] for c in checks])
    elif gate.get("failures"):
        out += _ul(gate["failures"])
    return out


def _validation(v: dict) -> str:
    checks = v.get("checks") or []
    failed = [c for c in checks if not c.get("passed")]
    n_checks = v.get("n_checks", len(checks))
    n_failed = v.get("n_failed", len(failed))
    src = v.get("source") or {}
    out = f"<p>{_badge(v.get('passed', not failed))} {_e(_num(n_checks - n_failed))} of {_e(_num(n_checks))} " \
          f"checks passed on {_e(_num(v.get('rows')))} rows.</p>"
    if src:
        out += _kv([(f"source {k}", val) for k, val in src.items()])
    if failed:
        out += "<h3>Failed checks</h3>" + _table(
            ["column", "rule", "observed", "threshold", "message", "sample rows"],
            [[c.get("column"), c.get("rule"), c.get("observed"), c.get("threshold"), c.get("message"),
              len(c.get("samples") or [])] for c in failed])
    return out


def _tuning(t: dict) -> str:
    metric, trials = t.get("metric", "score"), t.get("trials") or []
    errors = sum(1 for tr in trials if tr.get("error"))
    base = t.get("baselines") or {}
    info = _kv([("metric", f"{metric} ({t.get('mode', '?')})"), ("best score", t.get("best_score")),
                *[(f"baseline: {k}", v if v is not None else "failed") for k, v in base.items()],
                ("best iteration", t.get("best_iteration")), ("trials", t.get("n_trials", len(trials))),
                ("failed trials", errors), ("strategy", t.get("strategy")), ("seconds", t.get("seconds"))])
    cfg = t.get("best_config") or {}
    if cfg:
        info += "<h3>Best config</h3>" + _table(["parameter", "value"], [[k, v] for k, v in cfg.items()])
    fig = ""
    if any(isinstance(tr.get(metric), (int, float)) for tr in trials):
        fig = _img(plots.tuning_history(trials, metric, t.get("mode", "max")), "tuning history")
    return _row(info, fig)


def _importance(scores: dict) -> str:
    if not scores:
        return _na("Feature importance")
    return _img(plots.feature_importance({str(k): float(v) for k, v in scores.items()}), "feature importance")


def _curves(c: dict) -> str:
    figs = []
    roc, pr = c.get("roc") or {}, c.get("pr") or {}
    if roc.get("fpr"):
        figs.append(_img(plots.curve(roc["fpr"], roc["tpr"], "false positive rate", "true positive rate", "ROC"), "ROC"))
    if pr.get("recall"):
        figs.append(_img(plots.curve(pr["recall"], pr["precision"], "recall", "precision", "Precision-recall"), "PR"))
    return f'<div class="figs">{"".join(figs)}</div>' if figs else _na("Curves (one class in the test set?)")


def _quality(q: dict | None) -> _Raw:
    if not q:
        return _Raw("–")
    rate = q.get("null_rate")
    nulls = f"{_num(q.get('nulls'))}" + (f" ({rate:.1%})" if isinstance(rate, (int, float)) else "")
    text = _e(f"nulls {nulls}, out of range {_num(q.get('out_of_range'))}, unseen {_num(q.get('unseen'))}")
    flags = "".join(f'<br><span class="flag">{_e(f)}</span>' for f in q.get("flags") or [])
    return _Raw(text + flags)


def _verdict_cell(e: dict) -> _Raw:
    note = e.get("note")
    return _Raw(_verdict(e.get("verdict")) + (f'<br><span class="small">{_e(note)}</span>' if note else ""))


def _tests(tests: dict | None) -> _Raw:
    if not tests:
        return _Raw("–")
    def one(v):
        if isinstance(v, dict):
            return ", ".join(f"{k} {_num(x, 3)}" for k, x in v.items())
        return _num(v, 3)
    return _Raw('<span class="small">' + "<br>".join(f"{_e(k)}: {_e(one(v))}" for k, v in tests.items()) + "</span>")


P_VALUE_RULES = ("ks", "chi2")     # fixed rules whose threshold bounds the p-value, not the statistic
RATIO_CAP = 10.0


def _ratio(e: dict) -> float | None:
    """How far past its threshold a test is, 1 = at it: statistic / threshold, or for a fixed
    p-value rule log(p) / log(threshold). None when not computable."""
    ok = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)  # noqa: E731
    v, t, p = e.get("value"), e.get("threshold"), e.get("p_value")
    if e.get("statistic") in P_VALUE_RULES:
        if ok(p) and ok(t) and 0 < t < 1:
            return math.log(max(p, 1e-300)) / math.log(t)
        return None
    return v / t if ok(v) and ok(t) and t > 0 else None


def _ratio_plot(entries: list[dict]):
    rows = [(str(e.get("name", "?"))[:40], r, e.get("verdict")) for e in entries if (r := _ratio(e)) is not None]
    if not rows:
        return None
    rows = rows[::-1]
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(7, 0.28 * max(len(rows), 4) + 1))
    ax.barh([r[0] for r in rows], [min(r[1], RATIO_CAP) for r in rows],
            color=[VERDICT_COLOR.get(r[2], "#757575") for r in rows])
    for i, r in enumerate(rows):
        if r[1] > RATIO_CAP:
            ax.text(RATIO_CAP, i, f" {r[1]:.3g}", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("statistic / threshold (1 = at the threshold; colour = verdict)")
    fig.tight_layout()
    return fig


def _hist_plot(e: dict):
    ref, win = e.get("reference_hist") or {}, e.get("window_hist") or {}
    labels = list(ref.get("labels") or [])
    labels += [lab for lab in win.get("labels") or [] if lab not in labels]
    if not labels:
        return None
    r = dict(zip(ref.get("labels") or [], ref.get("shares") or []))
    w = dict(zip(win.get("labels") or [], win.get("shares") or []))
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(3.6, 2.7))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [r.get(lab, 0) for lab in labels], 0.4, label="reference", color="#90a4ae")
    ax.bar([x + 0.2 for x in xs], [w.get(lab, 0) for lab in labels], 0.4, label="window", color="#e57373")
    ax.set_xticks(list(xs))
    tilt = len(labels) > 4 or max(len(str(lab)) for lab in labels) > 10
    ax.set_xticklabels([str(lab)[:18] for lab in labels], rotation=35 if tilt else 0, ha="right" if tilt else "center",
                       fontsize=7)
    ax.set_ylabel("share", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"{str(e.get('name', '?'))[:30]}: {e.get('statistic', '')} {_num(e.get('value'), 3)} ({e.get('verdict', '?')})",
                 fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def _drift_windows(windows: list[dict]) -> str:
    """The recent drift checks, newest first: of the prediction log and of data (``monitor --data``)."""
    def drifted(w):
        names = [str(n) for n in w.get("drifted") or []]
        return ", ".join(names[:6]) + (f" (+{len(names) - 6})" if len(names) > 6 else "") or "none"
    return "<h3>Recent windows (newest first; the newest in detail below)</h3>" + _table(
        ["checked", "source", "window", "rows", "reference", "verdict", "drift share", "drifted", "domain AUC"],
        [[w.get("created"), w.get("source"), w.get("path") if w.get("source") == "data"
          else f"{w.get('since') or 'start'} to {w.get('until') or 'now'}", w.get("rows"),
          f"version {w.get('version')}" if w.get("version") else None,
          _badge(not w.get("drift"), "no drift", "drift") if w.get("drift") is not None else None,
          w.get("drift_share"), drifted(w), w.get("auc")] for w in windows])


def _drift(d: dict, windows: list[dict] | None = None) -> str:
    win, ref = d.get("window") or {}, d.get("reference") or {}
    since, until = win.get("since"), win.get("until")
    out = _drift_windows(windows) if windows and len(windows) > 1 else ""
    out += f"<p>{_badge(not d.get('drift'), 'no drift', 'drift')} " \
          f"{_e(_num(len(d.get('drifted') or [])))} drifted ({_e(_num(d.get('drift_share'), 3))} of the " \
          f"judged features): {_e(', '.join(map(str, d.get('drifted') or [])) or 'none')}" \
          f"{'; the prediction drifted' if (d.get('prediction') or {}).get('verdict') == 'drift' else ''}" \
          f"{'; the domain classifier drifted' if (d.get('multivariate') or {}).get('drifted') else ''}</p>"
    alpha = _num(d.get("alpha")) + (f" ({_num(d['alpha_per_test'], 3)} per test)" if d.get("alpha_per_test") else "")
    out += _kv([("window", f"{win.get('source', '?')}: {_num(win.get('rows'))} rows, {since or 'start'} to {until or 'now'}"),
                ("window path", win.get("path")),
                ("reference", f"version {ref.get('version', '?')}, {_num(ref.get('rows'))} rows"),
                ("method", d.get("method")), ("alpha", alpha)])
    features = list(d.get("features") or [])
    pred = d.get("prediction")
    entries = features + ([{**pred, "name": pred.get("name") or "(prediction)"}] if pred else [])
    if entries:
        out += _table(["feature", "kind", "rows", "statistic", "value", "threshold", "p-value", "effect",
                       "min effect", "verdict", "quality", "tests"],
                      [[e.get("name"), e.get("kind"), e.get("rows"), e.get("statistic"), e.get("value"),
                        e.get("threshold"), e.get("p_value"), e.get("effect"), e.get("min_effect"),
                        _verdict_cell(e), _quality(e.get("quality")), _tests(e.get("tests"))]
                       for e in entries])
        out += ('<p class="small">threshold: the null quantile of the statistic at the window\'s size; drift '
                'needs p-value &le; alpha per test and effect &ge; min effect. With a fixed rule it is the '
                'rule\'s bound (for ks and chi2 a bound on the p-value).</p>')
        fig = _ratio_plot(entries)
        if fig is not None:
            out += "<h3>Statistic relative to its threshold</h3>" + _img(fig, "drift ratio per feature")
    excluded = list(d.get("excluded") or [])
    if excluded:
        out += "<h3>Not tested for drift</h3>" + _table(
            ["feature", "kind", "reason", "quality", "note"],
            [[e.get("name"), e.get("kind"), e.get("reason"), _quality(e.get("quality")), e.get("note")]
             for e in excluded])
    drifted = [f for f in features if f.get("verdict") == "drift"]
    shown = drifted[:MAX_DRIFT_HISTOGRAMS] + ([entries[-1]] if pred else [])
    figs = [f for f in (_hist_plot(e) for e in shown) if f is not None]
    if figs:
        more = len(drifted) - MAX_DRIFT_HISTOGRAMS
        note = f' <span class="small">({more} more drifted features not drawn)</span>' if more > 0 else ""
        out += f"<h3>Reference vs window{note}</h3><div class=\"figs\">" + \
               "".join(_img(f, "histogram") for f in figs) + "</div>"
    mv = d.get("multivariate")
    if mv:
        out += f"<h3>Multivariate (domain classifier) {_badge(not mv.get('drifted'), 'ok', 'drift')}</h3>"
        top = mv.get("top_features") or []
        facts = [("AUC", mv.get("auc")), ("threshold", mv.get("threshold"))]
        facts += [("note", mv.get("note"))] if mv.get("note") else []
        facts += [("without", "; ".join(f"{c} ({why})" for c, why in mv["excluded"]))] if mv.get("excluded") else []
        out += _row(_kv(facts),
                    _table(["top feature", "importance"], [list(t)[:2] for t in top]) if top else "")
    return out


_WEIGHT_AFTER = {"deployed": 0.0, "shadow": 0.0, "shadow_passed": 0.0, "rolled_back": 0.0, "promoted": 0.0}
_EVENT_COLOR = {"rolled_back": "#c62828", "deploy_failed": "#c62828", "promoted": "#2e7d32", "shadow_passed": "#2e7d32"}
ROLLOUT_EVENTS = ("canary", "shadow", "step", "promoted", "rolled_back", "resumed", "shadow_passed")
PLOT_GAP_S = 6 * 3600          # the weight plot starts after the last quiet gap this long (e.g. a deploy days ago)


def _epoch(t):
    """Epoch seconds from an epoch or an ISO string (naive means UTC); anything else unchanged."""
    if isinstance(t, str):
        try:
            x = parse_iso(t)
        except OverflowError:
            x = None
        return t if x is None else x.replace(tzinfo=dt.timezone.utc).timestamp()
    return t


def _rollout_rows(history: list[dict]) -> list[dict]:
    """One row per event: the canary weight after it, and the weight its window stats were judged at
    (a ``step`` event carries the stats of the step it ends and the weight of the step it starts)."""
    rows, weight = [], 0.0
    for e in history:
        what = e.get("event") or e.get("phase") or "?"
        new = e.get("weight") if isinstance(e.get("weight"), (int, float)) else _WEIGHT_AFTER.get(what, weight)
        m = e.get("metrics") if isinstance(e.get("metrics"), dict) else {}
        c, s = m.get("canary") or {}, m.get("stable") or {}
        rows.append({"t": _epoch(e.get("t", e.get("time"))), "event": what, "version": e.get("version"), "weight": new,
                     "judged_at": weight if m else None, "c": c, "s": s, "m": m, "reason": e.get("reason")})
        weight = new
    return rows


def _weight_plot(rows: list[dict]):
    pts = [r for r in rows if isinstance(r["t"], (int, float)) and not isinstance(r["t"], bool)]
    if not pts:
        return None
    first = len(pts) - 1
    while first > 0 and pts[first]["t"] - pts[first - 1]["t"] <= PLOT_GAP_S:
        first -= 1
    carried = pts[first - 1]["weight"] if first > 0 else 0.0
    plt = plots._plt()
    import matplotlib.dates as mdates
    when = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).replace(tzinfo=None)  # noqa: E731
    xs, ys = [when(pts[first]["t"])], [carried]
    for r in pts[first:]:
        xs.append(when(r["t"]))
        ys.append(100.0 if r["event"] == "promoted" else r["weight"])   # promotion: a spike to 100 %
        if r["event"] == "promoted":
            xs.append(when(r["t"]))
            ys.append(r["weight"])
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.step(xs, ys, where="post", color="#1565c0", linewidth=1.5)
    for kind, marker, color in (("canary", "^", "#1565c0"), ("step", "o", "#1565c0"),
                                ("promoted", "*", "#2e7d32"), ("rolled_back", "X", "#c62828")):
        sel = [(when(r["t"]), 100.0 if kind == "promoted" else r["weight"]) for r in pts[first:] if r["event"] == kind]
        if sel:
            ax.scatter(*zip(*sel), marker=marker, s=110 if marker in "X*" else 30, color=color, zorder=3, label=kind)
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_ylabel("canary weight %")
    ax.set_ylim(-5, 108)
    since = "" if first == 0 else f", since {_when(pts[first]['t'])}"
    ax.set_title(f"canary weight over time (UTC{since})", fontsize=10)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def _step_plot(rows: list[dict]):
    judged = [r for r in rows if r["c"] or r["s"]]
    if not judged:
        return None
    plt = plots._plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    xs = list(range(len(judged)))
    labels = [f"{r['version'] or '?'} @ {_num(r['judged_at'], 3)}%" for r in judged]
    for ax, key, scale, title in ((axes[0], "error_rate", 100, "error rate %"), (axes[1], "p99_ms", 1, "p99 latency ms")):
        top = 0.0
        for side, off, color, name in (("s", -0.2, "#90a4ae", "stable"), ("c", 0.2, "#e57373", "canary")):
            ys = [r[side].get(key) * scale if isinstance(r[side].get(key), (int, float)) else 0 for r in judged]
            ax.bar([x + off for x in xs], ys, 0.4, color=color, label=name)
            top = max([top, *ys])
        ax.set_ylim(0, top * 1.35 or 1)
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=7, rotation=30 if len(xs) > 4 else 0)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle("judged steps: version @ canary weight", fontsize=9)
    fig.tight_layout()
    return fig


def _event(what: str) -> _Raw:
    color = _EVENT_COLOR.get(what)
    return _Raw(f'<span class="badge" style="background:{color}">{_e(what)}</span>' if color else _e(what))


def _rollout(s: dict) -> str:
    out = _kv([("model", s.get("name")), ("phase", s.get("phase")), ("stable", s.get("stable")),
               ("canary", s.get("canary")), ("weight %", s.get("weight")), ("step", s.get("step")),
               ("previous", s.get("previous")), ("reason", s.get("reason")),
               ("updated", _when(s.get("updated")) if s.get("updated") else None)])
    history = [e for e in s.get("history") or [] if isinstance(e, dict)]
    if not history:
        return out + _na("Rollout history")
    rows = _rollout_rows(history)
    if any(r["event"] in ROLLOUT_EVENTS for r in rows):
        weight, steps = _weight_plot(rows), _step_plot(rows)
        out = _row(out, _img(weight, "canary weight") if weight is not None else "")
    else:           # a chart of a weight that never left 0 is an empty plot
        weight = steps = None
        out += ('<p class="na">No canary chart: no rollout has run (only deploys); `mlops-ray rollout CONFIG '
                '--version N` starts one, and the chart of its canary weight appears here.</p>')
    if steps is not None:
        out += _img(steps, "canary vs stable per step")

    def pair(r, key, scale=1.0, fmt="{:.3g}"):
        c, s_ = r["c"].get(key), r["s"].get(key)
        if c is None and s_ is None:
            return None
        f = lambda v: fmt.format(v * scale) if isinstance(v, (int, float)) else "–"  # noqa: E731
        return f"{f(c)} / {f(s_)}"

    out += "<h3>Timeline</h3>" + _table(
        ["time", "event", "version", "weight % after", "judged at %", "requests c/s", "error % c/s", "p99 ms c/s",
         "error Δ", "psi", "reason"],
        [[_when(r["t"]), _event(r["event"]), r["version"], r["weight"], r["judged_at"], pair(r, "requests", fmt="{:.0f}"),
          pair(r, "error_rate", 100), pair(r, "p99_ms"), r["m"].get("error_rate_delta"),
          r["m"].get("prediction_psi"), r["reason"]] for r in rows])
    return out


def _decisions(ds: list[dict]) -> str:
    if not ds:
        return _na("Retrain decisions")

    def key(d):
        t = _epoch(d.get("time"))
        return t if isinstance(t, (int, float)) and not isinstance(t, bool) else -math.inf

    rows = sorted(ds, key=key, reverse=True)
    return _table(["time", "trigger", "reasons", "action", "run id", "version", "outcome", "error"],
                  [[d.get("time"), _badge(not d.get("trigger"), "no", "yes") if "trigger" in d else None,
                    _ul(_why(d)), d.get("action"), d.get("run_id"), d.get("version"),
                    d.get("outcome"), d.get("error")] for d in rows])


def _why(d: dict) -> list[str]:
    """What a decision rests on: the triggers that fired; else what blocked them, what was checked and
    did not fire, a monitor that could not run, or the pending rollout it retried."""
    out = list(d.get("reasons") or [])
    if d.get("blocked"):
        out.append(f"blocked: {d['blocked']}")
    if not d.get("reasons"):
        out += [f"not fired: {c}" for c in d.get("checked") or []]
    if d.get("monitor_error"):
        out.append(f"monitor: {d['monitor_error']}")
    if not out and d.get("action") == "rollout" and d.get("version"):
        out.append(f"the rollout of version {d['version']} could not start in the last iteration; retried")
    return out or ["nothing to check (no drift report, no labelled predictions, no schedule)"]


SECTIONS = (("model", "Model", _model), ("validation", "Data validation", _validation),
            ("tuning", "Tuning", _tuning), ("importance", "Feature importance", _importance),
            ("curves", "ROC and precision-recall", _curves), ("drift", "Drift", _drift),
            ("rollout", "Serving and rollout", _rollout), ("decisions", "Retrain decisions", _decisions))


def _confusion(c: dict) -> str:
    """A multiclass confusion matrix: a row per true class, a column per predicted class."""
    names, matrix = c["classes"], c["matrix"]
    rows = [[f"true {t}", *row, sum(row), f"{row[i] / sum(row):.1%}" if sum(row) else "–"]
            for i, (t, row) in enumerate(zip(names, matrix))]
    return ("<h3>Confusion matrix (test split)</h3>"
            + _table(["", *[f"predicted {p}" for p in names], "rows", "recall"], rows))


def _section(key: str, title: str, fn, value) -> str:
    if value is None:
        body = _na(title)
    else:
        try:
            body = fn(value)
        except Exception as e:      # one malformed piece must not cost the whole report
            log.exception("report section %s failed", key)
            body = f'<p class="na">{_e(title)} could not be rendered: {_e(type(e).__name__)}: {_e(e)}</p>'
    return f'<section id="{_e(key)}"><h2>{_e(title)}</h2>{body}</section>'


def render_report(ctx: dict) -> str:
    """The whole report as one HTML string (see the module docstring for ``ctx``)."""
    pipeline = ctx.get("pipeline") or "pipeline"
    fns = {"drift": lambda d: _drift(d, ctx.get("drift_windows"))}
    sections = "".join(_section(k, title, fns.get(k, fn), ctx.get(k)) for k, title, fn in SECTIONS)
    m = ctx.get("model") if isinstance(ctx.get("model"), dict) else None
    summary = "no model" if m is None else (
        f"{_e(m.get('name'))} v{_e(m.get('version'))} ({_e(m.get('task') or '?')})"
        + (f" {_badge((m.get('gate') or {}).get('passed'), 'gate passed', 'gate failed')}" if m.get("gate") else ""))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(pipeline)} report</title><style>{CSS}</style></head><body>"
            f'<header><h1>{_e(pipeline)}</h1><div class="sub">report generated {_e(ctx.get("generated") or "–")}'
            f" &middot; {summary}</div></header><main>{sections}</main><footer>mlops-ray monitoring report</footer></body></html>")


def write_report(ctx: dict, path: str) -> str:
    """Render and write the report to a local ``path``; returns the path."""
    text = render_report(ctx)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
