"""Everything the commands print: a result as a table or lines on the terminal, or as one JSON
document (``_emit_json``), and the progress of a long command on stderr.

In: the plain results the API returns (dicts and result objects). Out: text on ``out`` (stdout)
and ``err`` (stderr). Nothing here calls the API; the commands do and hand the result over.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- JSON and progress
class _json_stdout:
    """With --json, stdout carries the JSON document only: whatever else writes to file descriptor 1
    meanwhile (Ray prints its raylets' warnings, "(raylet) WARNING: 8 PYTHON worker processes ...", on
    the driver's stdout) goes to stderr, and ``_emit_json`` writes the document to the real stdout."""
    fd: int | None = None

    def __init__(self, json_mode: bool):
        self.json_mode = json_mode
        self._saved = None

    def __enter__(self):
        if self.json_mode and _json_stdout.fd is None:
            try:
                if sys.stdout.fileno() != 1:      # a test runner's captured stdout: nothing to shield
                    return self
                sys.stdout.flush()
                self._saved = os.dup(1)
                os.dup2(2, 1)
                _json_stdout.fd = self._saved
            except (OSError, ValueError):     # no real descriptors (an embedding host): leave stdout
                self._saved = None
        return self

    def __exit__(self, et, ev, tb):
        if self._saved is not None:
            sys.stdout.flush()
            os.dup2(self._saved, 1)
            os.close(self._saved)
            _json_stdout.fd = self._saved = None
        return False


def _emit_json(obj: Any) -> None:
    data = json.dumps(obj, indent=2, default=str) + "\n"
    fd = _json_stdout.fd
    if fd is None:
        sys.stdout.write(data)
        return
    view = memoryview(data.encode())
    while view:
        view = view[os.write(fd, view):]


def _progress(json_mode: bool):
    """The progress function commands pass to the API: None with --json (stdout holds the JSON, stderr
    stays quiet as before); in a terminal a ``_LiveProgress`` (a search is one live display); else one
    line per step message, which for a search is one line per finished trial."""
    if json_mode:
        return None
    if err.is_terminal and not err.is_dumb_terminal:
        return _LiveProgress(err)

    def show(step: str, message: str) -> None:
        err.print(f"[bold cyan]{step:>10}[/] {message}")
    return show


class _LiveProgress:
    """Progress in a terminal: a line per step message, and a Tune search drawn as one live display
    (a bar of trials done, counts, best score, time left) that is replaced, when the search ends or
    raises, by one summary line. Implements ``train.progress.SearchView``."""

    def __init__(self, console: Console):
        self.console = console
        self._live = None
        self._state = None

    def __call__(self, step: str, message: str) -> None:
        self.console.print(f"[bold cyan]{step:>10}[/] {message}")     # above the live display, if one runs

    def trials(self, state) -> None:
        self._state = state
        if self._live is None:
            # stdout on the same terminal goes through the console, so that a stray print cannot tear the display
            self._live = Live(self, console=self.console, transient=True, refresh_per_second=2,
                              redirect_stdout=sys.stdout.isatty(), redirect_stderr=True)
            self._live.start()
        self._live.refresh()

    def trials_ended(self, state, error: BaseException | None) -> None:
        # imported here: train.progress imports ray.tune (~0.75 s), which `mlops-ray --help` must not pay
        from mlops_ray.train.progress import summary
        if self._live is None:
            return
        self._state = state
        try:
            self._live.stop()
        finally:
            self._live = None
            self("tune", escape(summary(state, error)))

    def __rich__(self):
        # imported here: ray.tune, as above
        from mlops_ray.train.progress import counts, duration, score, time_left
        s = self._state
        grid = Table.grid(padding=(0, 1))
        grid.add_column(justify="right", width=10, style="bold cyan")
        grid.add_column(width=30)
        grid.add_column()
        grid.add_row("tune", ProgressBar(total=max(s.total, 1), completed=s.done, width=30), escape(counts(s)))
        rounds = sorted(s.rounds.values())
        grid.add_row("", "", escape(f"best {s.metric} {score(s.best)} · elapsed {duration(s.elapsed())} · "
                                    f"{time_left(s)}" + (f" · running at {', '.join(map(str, rounds))} rounds"
                                                        if rounds else "")))
        return grid


def _say(message: str) -> None:
    """One indented progress line on stderr."""
    err.print(f"  {message}")


def _short(v) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _rel(path: str) -> str:
    """``path`` relative to the current directory when it lies under it (shorter commands to copy)."""
    if "://" in path or not os.path.isabs(path):
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# --------------------------------------------------------------------------- config and data
def _print_config_ok(config: str, cfg) -> None:
    out.print(f"[green]✓[/] {config} is valid (pipeline [bold]{cfg.name}[/], hash {cfg.config_hash})")


def _print_schema(text: str, output: str | None) -> None:
    """The schema on stdout, or the line saying where it was written."""
    if output:
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text + "\n")


def _print_synth(rep) -> None:
    out.print(f"[green]✓[/] wrote {rep.rows:,} rows in {rep.files} file(s), "
              f"{rep.bytes / 1e6:.1f} MB, positive rate {rep.positive_rate:.2%}, to {rep.out} "
              f"in {rep.seconds:.1f} s")


def _print_validation(report, to: Console = out) -> None:
    if report.passed:
        rules = Counter(c.rule for c in report.checks)
        to.print(f"[green]✓[/] validation: {len(report.checks)} checks passed on {report.rows:,} rows "
                 f"({', '.join(f'{r} {n}' for r, n in rules.items())})")
        for c in report.checks:
            if c.message:             # a passed check that has something to say (a date format inferred)
                to.print(f"  {c.message}")
        return
    t = Table(title=f"Validation: {report.rows:,} rows, {len(report.checks)} checks, "
                    f"{len(report.failures)} failed", title_justify="left")
    for col in ("column", "rule", "observed", "threshold"):
        t.add_column(col, overflow="fold")
    for c in report.failures:
        t.add_row(c.column or "-", c.rule, _short(c.observed), _short(c.threshold))
    to.print(t)
    for c in report.failures:
        to.print(f"[red]✗[/] {c.message}")
        for s in c.samples[:5]:
            to.print(f"    e.g. {json.dumps(s, default=str)}")


def _print_data_result(res) -> None:
    _print_validation(res.validation)
    spec = res.spec
    t = Table(title="Features", title_justify="left")
    for col in ("kind", "count", "columns"):
        t.add_column(col, overflow="fold")
    t.add_row("numeric", str(len(spec.numeric)), ", ".join(f.name for f in spec.numeric))
    t.add_row("derived", str(len(spec.derived)), ", ".join(f"{f.name} = {f.expr}" for f in spec.derived))
    t.add_row("categorical", str(len(spec.categorical)),
              ", ".join(f"{f.name} ({len(f.vocab)} + OOV)" for f in spec.categorical))
    t.add_row("datetime", str(len(spec.datetime)),
              ", ".join(f"{d.name} → {'/'.join(d.parts)}" for d in spec.datetime))
    out.print(t)
    rows = ", ".join(f"{k} {v:,}" for k, v in res.split_rows.items())
    times = ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items())
    out.print(f"[green]✓[/] splits: {rows}\n  written to {res.out_dir}" + (f"\n  time: {times}" if times else ""))


# --------------------------------------------------------------------------- training
def _print_run_result(res) -> None:
    _print_data_result(res.data)
    if res.search:
        s = res.search
        out.print(f"[green]✓[/] search: {s['n_trials']} trials ({s['strategy']}), best valid {s['metric']} "
                  f"{s['best_score']:.5f} at {s['best_iteration'] + 1} rounds, {s['seconds']:.1f} s"
                  + (f", on {len(s['nodes'])} nodes" if len(s.get("nodes") or {}) > 1 else ""))
        base = {k: v for k, v in (s.get("baselines") or {}).items() if v is not None}
        if base:
            out.print("  baselines (first trials): " + ", ".join(f"{k} {v:.5f}" for k, v in base.items()))
        if s.get("retried"):
            out.print(f"  [yellow]retried after a failure[/]: trial(s) {', '.join(t['trial_id'] for t in s['retried'])}")
    if res.evaluation:
        m = res.evaluation["metrics"]
        shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float) and k != "n")
        out.print(f"  test: {shown}")
        for lk in res.evaluation.get("leaks") or []:
            score = ", ".join(f"{k} {v}" for k, v in lk.items() if k not in ("feature", "rows"))
            out.print(f"  [yellow]probable leak[/]: feature {lk['feature']} alone scores {score} on validation; "
                      "check that it is known before the label (features.exclude drops it)")
        ch = res.evaluation.get("threshold_choice")
        if ch:
            v = ch.get("valid") or {}
            out.print(f"  threshold {ch['value']:.4f} ({ch['rule']}" + (
                f"; on validation precision {v['precision']:.3f}, recall {v['recall']:.3f}, f1 {v['f1']:.3f}"
                if v else "") + ")")
    if res.version:
        role = "champion" if "champion" in res.aliases else "challenger" if "challenger" in res.aliases else None
        verdict = f"[green]{role or 'passed the gate'}[/]" if res.promoted else "[red]rejected[/]"
        out.print(f"[green]✓[/] registered version {res.version}: {verdict}")
    if res.cached_steps:
        out.print(f"  cached steps: {', '.join(res.cached_steps)}")


# --------------------------------------------------------------------------- serving
def _print_addresses(res: dict) -> None:
    """The addresses ``endpoints`` found, the fastest first."""
    for a in res.get("addresses") or []:
        out.print(f"  POST {a['url']}  ({a['note']})")


def _print_deploy(res: dict, config: str) -> None:
    out.print(f"[green]✓[/] serving {res['model']} version {res['version']} ({res['seconds']:.1f} s)")
    _print_addresses(res)
    if res.get("local_head"):
        out.print(f"  local Ray head pid {res['local_head']['pid']} keeps running; stop it with "
                  f"`mlops-ray serve stop {config}`")


def _print_status(res: dict, name: str, thresholds: dict[str, str]) -> None:
    """``thresholds``: each version's current decision threshold, described."""
    out.print(f"[bold]{name}[/]: {res['summary']}" + ("" if res["running"] else "  [yellow](not running)[/]"))
    if isinstance(res.get("serve"), str):
        out.print(f"  {res['serve']}")
    _print_addresses(res)
    if res["versions"]:
        t = Table(title="Traffic since the replicas started", title_justify="left")
        for c in ("version", "requests", "errors", "p50 ms", "p99 ms"):
            t.add_column(c)
        for v, m in sorted(res["versions"].items()):
            t.add_row(v, f"{m['requests']:,}", f"{m['errors']:,}", _short(m["p50_ms"]), _short(m["p99_ms"]))
        out.print(t)
    if res.get("replicas"):
        nodes = {r.get("node_id") for r in res["replicas"]}
        out.print(f"  {len(res['replicas'])} replica(s) on {len(nodes)} node(s): " + ", ".join(
            f"{r['replica'].rsplit('-', 1)[-1]} on {r.get('node_ip', '?')} "
            f"(node {str(r.get('node_id', '?'))[:8]}, {r['requests']:,} requests)" for r in res["replicas"]))
    for h in (res["state"] or {}).get("history", [])[-5:]:
        info = ", ".join(f"{k}={v}" for k, v in h.items() if k not in ("t", "event", "metrics"))
        out.print(f"  {h['event']}: {info}")
    for v, h in res["thresholds"].items():
        out.print(f"  threshold of v{v}: {thresholds[v]}; registered {h[0]['value']:.4f}, "
                  f"{len(h) - 1} re-choice(s)")
    mon = res["monitor"]
    if mon["drift"]:
        d = mon["drift"]
        what = f"[red]drift[/] in {', '.join(d['drifted']) or 'the multivariate check'}" if d["drift"] \
            else "[green]no drift[/]"
        out.print(f"  monitor ({(d['created'] or '')[:19]}, {d['rows'] or 0:,} rows vs v{d['version']}): {what}"
                  + ("; quality: " + "; ".join(f"{k}: {v[0]}" for k, v in d["quality_flags"].items())
                     if d.get("quality_flags") else ""))
    if mon["decision"]:
        d = mon["decision"]
        out.print(f"  loop ({(d['time'] or '')[:19]}): {d['action']}"
                  + (f" → {d['outcome']}" if d.get("outcome") else "")
                  + (f" ({'; '.join(d['reasons'])})" if d.get("reasons") else "")
                  + (f" [{d['blocked']}]" if d.get("blocked") else ""))


def _print_rollout_action(res: dict, action: str) -> None:
    if action == "promote":
        out.print(f"[green]✓[/] version {res['version']} promoted to champion")
    else:
        out.print(f"[green]✓[/] version {res['version']} rolled back; stable is {res['stable']}")


def _rollout_view(cfg, json_mode: bool):
    """The function a rollout calls at each step (state, verdict): a line on stderr, none with --json."""
    def show(state, verdict):
        if json_mode:
            return
        if verdict is None:
            err.print(f"  {state.phase} version {state.canary} at {state.weight:g}%")
            return
        if verdict.metrics.get("no_traffic"):
            err.print(f"  [yellow]![/] {verdict.metrics['no_traffic']}")
        c = verdict.metrics.get("canary", {})
        err.print(f"  {state.phase} v{state.canary} {state.weight:g}%: {c.get('requests', 0)}/"
                  f"{cfg.rollout.min_requests} requests, errors {c.get('errors', 0)}, "
                  f"p99 {_short(c.get('p99_ms'))} ms, {verdict.metrics.get('elapsed_s', 0):g} s")
    return show


def _print_rollout(res: dict, cfg) -> None:
    if res["outcome"] == "promoted":
        out.print(f"[green]✓[/] version {res['version']} promoted to champion (previous {res['previous']} "
                  f"kept for {cfg.rollout.keep_previous_s:g} s for fast rollback)")
    else:
        out.print(f"[green]✓[/] shadow comparison of version {res['version']} passed")


def _print_stop(res: dict) -> None:
    out.print(res.get("message") or f"[green]✓[/] app deleted: {res['app_deleted']}, local head stopped: "
                                    f"{res['head_stopped']}")


def _print_build(res: dict) -> None:
    out.print(f"[green]✓[/] wrote {res['path']} (stable version {res['stable']}); deploy it with "
              f"`serve deploy {res['path']}`")


# --------------------------------------------------------------------------- batch scoring
def _print_predict(res: dict, log: bool) -> None:
    logged = f", logged {res['logged']:,} rows" if log else ""
    out.print(f"[green]✓[/] scored {res['rows']:,} rows with {res['model']} version {res['version']} in "
              f"{res['seconds']:.1f} s ({res['rows_per_s']:,.0f} rows/s) to {res['out']}{logged}")


# --------------------------------------------------------------------------- monitoring and the loop
def _print_drift(rep: dict, html: str | None) -> None:
    w = rep["window"]
    t = Table(title=f"Drift of {w['rows']:,} rows ({w['source']}) against version {rep['version']}'s reference "
                    f"({rep['reference']['rows']:,} rows); alpha {rep['alpha']:g} over all columns",
              title_justify="left")
    for c in ("column", "stat", "value", "null q", "p", "effect/min", "verdict"):
        t.add_column(c, overflow="fold")
    rows = rep["features"] + ([rep["prediction"]] if rep.get("prediction") else [])
    for f in rows:
        colour = {"drift": "red", "ok": "green"}.get(f["verdict"], "yellow")
        t.add_row(f["name"], {"wasserstein": "W1/sd"}.get(f.get("statistic"), f.get("statistic") or "-"),
                  _num(f.get("value")), _num(f.get("threshold")), _num(f.get("p_value")),
                  f"{_num(f.get('effect'))}/{_num(f.get('min_effect'))}", f"[{colour}]{f['verdict']}[/]")
    out.print(t)
    excluded = rep.get("excluded") or []
    for f in rows + excluded:
        for flag in f.get("quality", {}).get("flags", []):
            out.print(f"  [yellow]quality[/] {f['name']}: {flag}")
    for f in rep["features"]:
        if f.get("field") and f["verdict"] == "insufficient":      # a datetime part over too short a span
            out.print(f"  {f['name']}: {f['note']}", markup=False)
    calendar = [e["name"] for e in excluded if e["kind"] == "calendar"]
    if calendar:
        out.print(f"  not tested for drift (calendar positions, data quality only): {', '.join(calendar)}",
                  markup=False)
    for e in excluded:
        if e["kind"] != "calendar":
            out.print(f"  {e['name']}: {e['reason']}", markup=False)
    mv = rep.get("multivariate")
    if mv and mv.get("auc") is not None:
        top = ", ".join(f"{n} {g:.0%}" for n, g in mv["top_features"][:3])
        left = f"; without {', '.join(c for c, _ in mv['excluded'])}" if mv.get("excluded") else ""
        out.print(f"  domain classifier AUC {mv['auc']:.3f} (drift above {mv['threshold']:.3f}); moved most: {top}"
                  f"{left}", markup=False)
    verdict = (f"[red]drift[/] in {len(rep['drifted'])} of {len(rep['features']) - len(rep['insufficient'])} columns "
               f"({rep['drift_share']:.0%}): {', '.join(rep['drifted'])}") if rep["drift"] else "[green]no drift[/]"
    out.print(f"{verdict}; report {rep['path']}" + (f", HTML {html}" if html else ""))


def _print_feedback(res: dict, mon) -> None:
    """``mon``: the config's monitor section (the prediction log's flush settings, for the hint)."""
    out.print(f"[green]✓[/] {res['labels']:,} labels stored (key {res['key']}); {res['duplicates']:,} "
              "duplicates (the last one counts)")
    if res["unknown_ids"]:
        later = ("they count once those rows are written" if res["key"] == "request_id" else
                 "run feedback again with this file once those rows are written, so each id is matched "
                 "to its request")
        out.print(f"  [yellow]![/] {res['unknown_ids']:,} label(s) name {res['key']} values not in the prediction "
                  f"log (yet): stored all the same. Serving writes the log every monitor.predlog_flush_s "
                  f"({mon.predlog_flush_s:g} s) or monitor.predlog_flush_rows ({mon.predlog_flush_rows:,} rows) "
                  f"per replica, so labels sent right after the traffic find no prediction yet: {later}")
    if res.get("unknown_classes"):
        out.print(f"  [yellow]![/] classes no logged version knows: {', '.join(res['unknown_classes'])} "
                  "(scored as wrong answers)")
    for v, m in res["versions"].items():
        val = "-" if m["value"] is None else f"{m['value']:.4f}"
        out.print(f"  version {v}: {m['labelled']:,} of {m['predictions']:,} predictions labelled "
                  f"({m['completeness']:.0%}); live {m['metric']} {val}")
    for v, e in res["thresholds"].items():
        if e["kept"]:
            value = f" {e['value']:.4f}" if e["value"] is not None else ""
            out.print(f"  [yellow]![/] version {v}: threshold{value} kept"
                      + (f" ({e['rule']})" if e["rule"] else "") + f": {e['reason']}")
        else:
            out.print(f"  version {v}: threshold {e['previous']:.4f} → {e['value']:.4f} ({e['rule']} on "
                      f"{e['rows']:,} rows, {e['positive_rate']:.1%} positive); serving picks it up without "
                      "a redeploy")


def _print_loop(entries: list[dict]) -> None:
    for e in entries:
        what = e.get("outcome") or ("no retrain" if not e.get("trigger") else e["action"])
        out.print(f"{e['time'][:19]}  {e['action']}: {what}" + (f" (version {e['version']})" if e.get("version")
                                                                else ""))


def _print_report(ctx: dict, html: str) -> None:
    out.print(f"[green]✓[/] report of {ctx['model']['name']} version {ctx['model']['version']}: {html}")


def _print_demo(res: dict, config: str, html: str, trains_on_month1: bool) -> None:
    times = ", ".join(f"{k} {v:.0f}s" for k, v in res["timings_s"].items())
    out.print(f"[green]✓[/] demo done in {res['seconds']:.0f} s ({times}); report {html}")
    out.print(_demo_next_steps(res, config, html, trains_on_month1), markup=False)


def _demo_next_steps(res: dict, config: str, html: str, trains_on_month1: bool) -> str:
    """Where the demo's results are and the commands that show them: the demo runs on its own store
    (a `status` of the quickstart config shows nothing of it), so they take the config it ran."""
    demo_cfg, store = _rel(res["config"]), _rel(res["store"])
    lines = [f"  the demo's models, runs, prediction log, drift checks and loop decisions are in {store} (its own "
             f"store); the config it ran is {demo_cfg}. Look at them with:",
             f"    mlops-ray status {demo_cfg}    # versions, rollout history, last drift check, loop decision",
             f"    mlops-ray report {demo_cfg} --html {html}",
             f"    mlops-ray deploy {demo_cfg}    # serve its champion again; then mlops-ray serve stop {demo_cfg}"]
    if "://" not in res["store"]:
        lines.append(f"    mlflow ui --backend-store-uri sqlite:///{store}/mlflow.db")
    if trains_on_month1:
        lines.append(f"  {config} trains on the demo's month 1, in its own store: mlops-ray run {config}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- cluster
def _print_cluster_check(res: list[dict]) -> None:
    for r in res:
        out.print(f"[green]✓[/] {r['file']}: {', '.join(r['documents'])}")


def _job_log(json_mode: bool):
    """Where a job's log chunks go as they arrive: stdout, or stderr with --json (stdout holds the
    document)."""
    logs = err.file if json_mode else sys.stdout

    def on_log(chunk: str) -> None:
        logs.write(chunk)
        logs.flush()
    return on_log


def _print_job_submitted(res: dict) -> None:
    err.print(f"submitted job {res['job_id']} ({res['dashboard_url']}); following its logs "
              f"(Ctrl-C stops following, not the job: {res['follow'][2]})", markup=False)


def _print_submit(res: dict, wait: bool) -> None:
    if wait:
        out.print(f"[green]✓[/] job {res['job_id']} SUCCEEDED in {res['seconds']['done']:.1f} s")
    else:
        out.print(f"[green]✓[/] submitted job {res['job_id']} ({res['upload_files']:,} files, "
                  f"{res['upload_bytes'] / 1024 ** 2:.1f} MiB from {res['working_dir']})")
        out.print(f"  dashboard: {res['dashboard_url']}\n  follow it:\n" +
                  "\n".join(f"    {c}" for c in res["follow"]), markup=False)
