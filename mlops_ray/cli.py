"""The command line: thin. Each command loads the config, calls one API function,
prints the result (a table, or JSON with --json) and exits with the outcome's code.

Exit codes: 0 ok, 1 unexpected (a bug), 2 usage or config error, 3 data missing or
invalid, 4 gate rejected, 5 rollout aborted, 6 registry error, 7 not enough resources,
8 serving cannot do what was asked, 9 drift, 10 monitoring cannot
do what was asked, 11 a submitted job failed.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlops_ray.errors import ConfigError, DataValidationError, ExitCode, MlopsError

# the options of the top-level callback (``_main``): accepted after the command too
GLOBAL_FLAGS = ("--verbose", "-v", "--debug")


class _Group(typer.core.TyperGroup):
    """Moves the global flags written after the command (`mlops-ray run CONFIG --debug`, as the error
    message's "rerun with --debug" invites) to before it, where click expects a group's options. Words
    after ``--`` (the command `submit` forwards) are left alone."""

    def parse_args(self, ctx, args):
        end = args.index("--") if "--" in args else len(args)
        flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
        rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
        return super().parse_args(ctx, flags + rest + args[end:])


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mlops-ray: ingest, validate, featurize, tune, gate, register, serve and "
                       "monitor models on Ray.")
config_app = typer.Typer(no_args_is_help=True, help="Check a config or print its JSON Schema.")
data_app = typer.Typer(no_args_is_help=True, help="Data utilities.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
serve_app = typer.Typer(no_args_is_help=True, help="Serving lifecycle: stop, build a Serve config.")
app.add_typer(serve_app, name="serve")
cluster_app = typer.Typer(no_args_is_help=True, help="Cluster manifests (KubeRay, cluster launcher): check them.")
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("check")
def cluster_check(files: List[str] = typer.Argument(..., help="Manifests: KubeRay RayCluster/RayJob/RayService "
                                                              "YAML or a `ray up` cluster config."),
                  root: Optional[str] = typer.Option(None, "--root", help="Project root that referenced "
                                                     "configs are relative to (default: nearest pyproject.toml)."),
                  crds: Optional[str] = typer.Option(None, "--crds", help="Folder of KubeRay CRDs "
                                                     "(default: $MLOPS_RAY_KUBERAY_CRDS or tests/fixtures/kuberay)."),
                  json_out: bool = typer.Option(False, "--json")):
    """Validate manifests against KubeRay's CRDs / Ray's ray-schema.json and the rules only the
    controller checks; exit 2 with every problem named."""
    from mlops_ray.cluster.manifests import check_files
    with _guard(json_out):
        res = check_files(files, root=root, crd_dir=crds)
        _emit_json({"ok": True, "files": res}) if json_out else [
            out.print(f"[green]✓[/] {r['file']}: {', '.join(r['documents'])}") for r in res]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class State:
    verbose = False
    debug = False


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's logs and progress bars."),
          debug: bool = typer.Option(False, "--debug", help="Show tracebacks for expected errors too.")):
    State.verbose, State.debug = verbose, debug


# --------------------------------------------------------------------------- helpers
def _load(path: str, sets: list[str] | None):
    from mlops_ray.config import load_config
    overrides = {}
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like key.path=value")
        key, value = item.split("=", 1)
        import yaml
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e}); "
                              "write it as in the config file (4, true, [5, 25, 100], {key: value}), or quote "
                              f"text: --set '{key.strip()}=\"...\"'") from None
    return load_config(path, overrides)


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
        from rich.live import Live
        self._state = state
        if self._live is None:
            # stdout on the same terminal goes through the console, so that a stray print cannot tear the display
            self._live = Live(self, console=self.console, transient=True, refresh_per_second=2,
                              redirect_stdout=sys.stdout.isatty(), redirect_stderr=True)
            self._live.start()
        self._live.refresh()

    def trials_ended(self, state, error: BaseException | None) -> None:
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
        from rich.progress_bar import ProgressBar
        from rich.table import Table as Grid
        from mlops_ray.train.progress import counts, duration, score, time_left
        s = self._state
        grid = Grid.grid(padding=(0, 1))
        grid.add_column(justify="right", width=10, style="bold cyan")
        grid.add_column(width=30)
        grid.add_column()
        grid.add_row("tune", ProgressBar(total=max(s.total, 1), completed=s.done, width=30), escape(counts(s)))
        rounds = sorted(s.rounds.values())
        grid.add_row("", "", escape(f"best {s.metric} {score(s.best)} · elapsed {duration(s.elapsed())} · "
                                    f"{time_left(s)}" + (f" · running at {', '.join(map(str, rounds))} rounds"
                                                        if rounds else "")))
        return grid


def _emit_json(obj: Any) -> None:
    data = json.dumps(obj, indent=2, default=str) + "\n"
    fd = _guard.json_fd
    if fd is None:
        sys.stdout.write(data)
        return
    view = memoryview(data.encode())
    while view:
        view = view[os.write(fd, view):]


def _fail(e: BaseException, json_mode: bool) -> None:
    if isinstance(e, MlopsError):
        if json_mode:
            payload = e.to_dict()
            if isinstance(e, DataValidationError) and e.report is not None:
                payload["report"] = e.report.to_dict()
            _emit_json(payload)
        if isinstance(e, DataValidationError) and e.report is not None and not json_mode:
            _print_validation(e.report, to=err)
        if isinstance(e, DataValidationError) and e.report is not None:     # the report said it all
            err.print(f"[bold red]{e.headline}[/] (exit {e.exit_code})")
        else:
            err.print(f"[bold red]{e.headline}:[/] {escape(e.message)}", markup=True)
        if State.debug:
            err.print_exception()
        raise typer.Exit(e.exit_code)
    if State.debug:
        err.print_exception()
    else:
        err.print(f"[bold red]Unexpected error[/] ({type(e).__name__}): {e}\n"
                  "This is a bug in mlops-ray; rerun with --debug for the traceback.")
    raise typer.Exit(ExitCode.UNEXPECTED)


class _guard:
    """Turns expected errors into their message and exit code. With --json, stdout carries the JSON
    document only: whatever else writes to file descriptor 1 meanwhile (Ray prints its raylets'
    warnings, "(raylet) WARNING: 8 PYTHON worker processes ...", on the driver's stdout) goes to
    stderr, and the document is written to the real stdout."""
    json_fd: int | None = None

    def __init__(self, json_mode: bool):
        self.json_mode = json_mode
        self._saved = None

    def __enter__(self):
        if self.json_mode and _guard.json_fd is None:
            try:
                if sys.stdout.fileno() != 1:      # a test runner's captured stdout: nothing to shield
                    return self
                sys.stdout.flush()
                self._saved = os.dup(1)
                os.dup2(2, 1)
                _guard.json_fd = self._saved
            except (OSError, ValueError):     # no real descriptors (an embedding host): leave stdout
                self._saved = None
        return self

    def __exit__(self, et, ev, tb):
        try:
            if ev is None or isinstance(ev, (typer.Exit, SystemExit, KeyboardInterrupt)):
                return False
            _fail(ev, self.json_mode)
        finally:
            if self._saved is not None:
                sys.stdout.flush()
                os.dup2(self._saved, 1)
                os.close(self._saved)
                _guard.json_fd = self._saved = None


def _print_validation(report, to: Console = out) -> None:
    from collections import Counter
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


def _short(v) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


# --------------------------------------------------------------------------- config
@config_app.command("check")
def config_check(config: str = typer.Argument(..., help="Pipeline YAML."),
                 json_out: bool = typer.Option(False, "--json", help="Print the resolved config as JSON."),
                 set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """Validate a config file; print the resolved values."""
    with _guard(json_out):
        cfg = _load(config, set_)
        if json_out:
            _emit_json({"ok": True, "config_hash": cfg.config_hash,
                        "config": cfg.model_dump(mode="json", by_alias=True)})
        else:
            out.print(f"[green]✓[/] {config} is valid (pipeline [bold]{cfg.name}[/], hash {cfg.config_hash})")


@config_app.command("schema")
def config_schema(output: Optional[str] = typer.Option(None, "--out", help="Write to this file.")):
    """Print the JSON Schema of the pipeline config."""
    from mlops_ray.config import json_schema
    text = json.dumps(json_schema(), indent=2)
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text + "\n")


# --------------------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(rows: int = typer.Option(..., "--rows", min=1, help="Number of rows."),
               out_dir: str = typer.Option(..., "--out", help="Directory or URI to write Parquet parts into."),
               seed: int = typer.Option(0, "--seed"),
               start: str = typer.Option("2026-01-01", "--start", help="First timestamp (ISO date)."),
               days: float = typer.Option(90.0, "--days", min=0.001, help="Time span of the data."),
               drift: str = typer.Option("none", "--drift", help="none | covariate | label | concept | mixed (covariate + concept)"),
               drift_start: Optional[str] = typer.Option(None, "--drift-start", help="ISO time drift begins."),
               drift_strength: float = typer.Option(1.0, "--drift-strength", min=0.0),
               rows_per_file: int = typer.Option(500_000, "--rows-per-file", min=1000),
               num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1),
               overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files in --out."),
               json_out: bool = typer.Option(False, "--json")):
    """Generate a synthetic transactions data set (skewed, missing values, rare positives)."""
    from dataclasses import asdict

    import mlops_ray
    from mlops_ray.config import RayConfig
    with _guard(json_out):
        if drift not in ("none", "covariate", "label", "concept", "mixed"):
            raise ConfigError(f"--drift {drift!r} is not one of none, covariate, label, concept, mixed")
        rep = mlops_ray.synth(rows, out_dir, seed=seed, start=start, days=days, drift=drift,
                              drift_start=drift_start, drift_strength=drift_strength,
                              rows_per_file=rows_per_file, overwrite=overwrite,
                              ray=RayConfig(num_cpus=num_cpus))
        if json_out:
            _emit_json(asdict(rep))
        else:
            out.print(f"[green]✓[/] wrote {rep.rows:,} rows in {rep.files} file(s), "
                      f"{rep.bytes / 1e6:.1f} MB, positive rate {rep.positive_rate:.2%}, to {rep.out} "
                      f"in {rep.seconds:.1f} s")


# --------------------------------------------------------------------------- pipeline
@app.command("validate")
def validate_cmd(config: str = typer.Argument(..., help="Pipeline YAML."),
                 json_out: bool = typer.Option(False, "--json"),
                 set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """Ingest and validate the data against schema: (exit 3 on failure)."""
    import mlops_ray
    with _guard(json_out):
        cfg = _load(config, set_)
        report = mlops_ray.validate(cfg, verbose=State.verbose, progress=_progress(json_out))
        if json_out:
            _emit_json(report.to_dict())
        else:
            _print_validation(report)


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


@app.command("features")
def features_cmd(config: str = typer.Argument(..., help="Pipeline YAML."),
                 json_out: bool = typer.Option(False, "--json"),
                 set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """Ingest, validate and featurize: fit the FeatureSpec and write train/valid/test."""
    import mlops_ray
    with _guard(json_out):
        cfg = _load(config, set_)
        res = mlops_ray.featurize(cfg, verbose=State.verbose, progress=_progress(json_out))
        _emit_json(res.to_dict()) if json_out else _print_data_result(res)


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


@app.command("run")
def run_cmd(config: str = typer.Argument(..., help="Pipeline YAML."),
            json_out: bool = typer.Option(False, "--json"),
            set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value"),
            force: bool = typer.Option(False, "--force", help="Redo every step, ignoring cached outputs."),
            from_step: Optional[str] = typer.Option(None, "--from", help="Redo this step and the ones after it."),
            only: Optional[str] = typer.Option(None, "--only", help="Redo only this step (others from cache)."),
            resume: bool = typer.Option(False, "--resume", help="Continue an interrupted Tune search.")):
    """Run the pipeline: ingest → validate → featurize → tune → evaluate + gate → register.

    Exit 0: registered and promoted to champion; 3: data invalid; 4: rejected by the gate
    (registered with the reason, champion unchanged); 6: registry unreachable.
    """
    import mlops_ray
    from mlops_ray.pipeline import RunOptions
    with _guard(json_out):
        cfg = _load(config, set_)
        opts = RunOptions(force=force, from_step=from_step, only=only, resume=resume, verbose=State.verbose)
        res = mlops_ray.run(cfg, options=opts, progress=_progress(json_out))
        _emit_json(res.to_dict()) if json_out else _print_run_result(res)


# ---------------------------------------------------------------------- serving
@app.command("deploy")
def deploy_cmd(config: str = typer.Argument(..., help="Pipeline YAML."),
               version: Optional[str] = typer.Option(None, "--version", help="Registered version number to serve."),
               alias: Optional[str] = typer.Option(None, "--alias", help="Alias to serve (default: champion)."),
               force: bool = typer.Option(False, "--force", help="Serve it even if it was rejected."),
               json_out: bool = typer.Option(False, "--json"),
               set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """Serve a registered version on Ray Serve as the stable version.

    Without ray.address this starts a local Ray head that keeps running after the command
    (stop it with `mlops-ray serve stop CONFIG`). Serving an app that already runs switches
    its version live, without restarting replicas.
    """
    from mlops_ray.serve import control
    with _guard(json_out):
        if version and alias:
            raise ConfigError("give --version or --alias, not both")
        cfg = _load(config, set_)
        res = control.deploy(cfg, version or (f"@{alias}" if alias else "champion"), verbose=State.verbose, force=force,
                             on_progress=None if json_out else (lambda m: err.print(f"  {m}")))
        if json_out:
            _emit_json(res)
            return
        out.print(f"[green]✓[/] serving {res['model']} version {res['version']} ({res['seconds']:.1f} s)")
        _print_addresses(res)
        if res.get("local_head"):
            out.print(f"  local Ray head pid {res['local_head']['pid']} keeps running; stop it with "
                      f"`mlops-ray serve stop {config}`")


def _print_addresses(res: dict) -> None:
    """The addresses ``endpoints`` found, the fastest first."""
    for a in res.get("addresses") or []:
        out.print(f"  POST {a['url']}  ({a['note']})")


@app.command("status")
def status_cmd(config: str = typer.Argument(..., help="Pipeline YAML."),
               json_out: bool = typer.Option(False, "--json"),
               set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """What serves: versions, weights, rollout phase, per-version traffic and errors."""
    from mlops_ray.serve import control
    with _guard(json_out):
        cfg = _load(config, set_)
        from mlops_ray.lifecycle.reports import monitor_summary
        from mlops_ray.monitor import thresholds
        res = control.status(cfg)
        res["monitor"] = monitor_summary(cfg)
        st = res.get("state") or {}
        res["thresholds"] = thresholds.recorded(cfg, [v for v in (st.get("stable"), st.get("canary")) if v])
        if json_out:
            _emit_json(res)
            return
        out.print(f"[bold]{cfg.name}[/]: {res['summary']}" + ("" if res["running"] else "  [yellow](not running)[/]"))
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
            out.print(f"  threshold of v{v}: {thresholds.describe(h[-1])}; registered {h[0]['value']:.4f}, "
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


@app.command("rollout")
def rollout_cmd(args: List[str] = typer.Argument(..., metavar="[promote|rollback] CONFIG",
                                                 help="Pipeline YAML, optionally after promote or rollback."),
                version: Optional[str] = typer.Option(None, "--version", help="Version to roll out."),
                force: bool = typer.Option(False, "--force", help="Roll it out even if the gate rejected it."),
                shadow: bool = typer.Option(False, "--shadow", help="Mirror traffic to it and compare; "
                                                                  "stable keeps answering."),
                json_out: bool = typer.Option(False, "--json"),
                set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """Roll --version out in rollout.steps, comparing it with stable at each step.

    Exit 0: promoted (alias champion moved); 5: rolled back (version tagged rejected).
    A controller that was stopped resumes where it was when started again.
    `rollout promote CONFIG` ends a rollout now; `rollout rollback CONFIG` stops it, or after
    a promotion returns to the previous version while it is still kept.
    """
    from mlops_ray.serve import control
    with _guard(json_out):
        action = args[0] if args[0] in ("promote", "rollback") else None
        rest = args[1:] if action else args
        if len(rest) != 1 or (action is None and version is None) or (action and version):
            raise ConfigError("usage: mlops-ray rollout CONFIG --version N [--shadow], "
                              "mlops-ray rollout promote CONFIG, or mlops-ray rollout rollback CONFIG")
        cfg = _load(rest[0], set_)
        if action:
            res = control.rollout_action(cfg, action)
            if json_out:
                _emit_json(res)
            elif action == "promote":
                out.print(f"[green]✓[/] version {res['version']} promoted to champion")
            else:
                out.print(f"[green]✓[/] version {res['version']} rolled back; stable is {res['stable']}")
            return

        def show(state, verdict):
            if json_out:
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
        res = control.rollout(cfg, version, shadow=shadow, verbose=State.verbose, on_progress=show, force=force)
        if json_out:
            _emit_json(res)
        elif res["outcome"] == "promoted":
            out.print(f"[green]✓[/] version {res['version']} promoted to champion (previous {res['previous']} "
                      f"kept for {cfg.rollout.keep_previous_s:g} s for fast rollback)")
        else:
            out.print(f"[green]✓[/] shadow comparison of version {res['version']} passed")


@serve_app.command("stop")
def serve_stop(config: str = typer.Argument(..., help="Pipeline YAML."),
               json_out: bool = typer.Option(False, "--json"),
               set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """Delete the app (replicas flush their prediction logs) and stop the local Ray head it ran on."""
    from mlops_ray.serve import control
    with _guard(json_out):
        res = control.stop(_load(config, set_), verbose=State.verbose)
        if json_out:
            _emit_json(res)
        else:
            out.print(res.get("message") or f"[green]✓[/] app deleted: {res['app_deleted']}, local head stopped: "
                                            f"{res['head_stopped']}")


@serve_app.command("build")
def serve_build(config: str = typer.Argument(..., help="Pipeline YAML."),
                output: str = typer.Option("serve_config.yaml", "--out", help="Where to write the Serve config."),
                version: Optional[str] = typer.Option(None, "--version", help="Version to serve if none is deployed."),
                json_out: bool = typer.Option(False, "--json"),
               set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """Write a Serve config YAML for Ray's own `serve deploy`."""
    from mlops_ray.serve import control
    with _guard(json_out):
        res = control.build(_load(config, set_), output, version or "champion")
        _emit_json(res) if json_out else out.print(
            f"[green]✓[/] wrote {res['path']} (stable version {res['stable']}); deploy it with `serve deploy {res['path']}`")


# ---------------------------------------------------------------------- batch scoring
@app.command("predict")
def predict_cmd(config: str = typer.Argument(..., help="Pipeline YAML."),
                data: str = typer.Option(..., "--data", help="File, directory, glob or URI to score (Parquet/CSV)."),
                output: str = typer.Option(..., "--out", help="Directory or URI to write the predictions into."),
                version: Optional[str] = typer.Option(None, "--version", help="Registered version number to use."),
                alias: Optional[str] = typer.Option(None, "--alias", help="Alias to use (default: champion)."),
                log: bool = typer.Option(False, "--log", help="Also append the rows to the prediction log."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files in --out."),
                keep: Optional[str] = typer.Option(None, "--keep", help="Input columns to copy into the "
                                                   "predictions, comma-separated (e.g. --keep 'Title,Release Date'). "
                                                   "Without data.id_column the output also has 'row', the input "
                                                   "row's position."),
                json_out: bool = typer.Option(False, "--json"),
                set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """Score --data with a registered version on Ray Data; write Parquet predictions to --out.

    Exit 3: the data lacks an input column of the model, or --out is not empty (without
    --overwrite); 6: no such version or alias.
    """
    from mlops_ray.lifecycle.predict import batch_predict
    with _guard(json_out):
        if version and alias:
            raise ConfigError("give --version or --alias, not both")
        cfg = _load(config, set_)
        res = batch_predict(cfg, data, output, version or (f"@{alias}" if alias else "champion"), log=log,
                            overwrite=overwrite, keep=[c.strip() for c in keep.split(",") if c.strip()] if keep else None,
                            verbose=State.verbose, progress=_progress(json_out))
        if json_out:
            _emit_json(res)
            return
        logged = f", logged {res['logged']:,} rows" if log else ""
        out.print(f"[green]✓[/] scored {res['rows']:,} rows with {res['model']} version {res['version']} in "
                  f"{res['seconds']:.1f} s ({res['rows_per_s']:,.0f} rows/s) to {res['out']}{logged}")


# ---------------------------------------------------------------------- monitoring
@app.command("monitor")
def monitor_cmd(config: str = typer.Argument(..., help="Pipeline YAML."),
                since: Optional[str] = typer.Option(None, "--since", help="Window: the last DURATION (2h, 7d) or "
                                                    "since an ISO time; default monitor.window."),
                window: Optional[str] = typer.Option(None, "--window", help="Window START..END (ISO times)."),
                data: Optional[str] = typer.Option(None, "--data", help="Monitor a dataset instead of the log."),
                reference_data: Optional[str] = typer.Option(None, "--reference-data",
                                                             help="Build the reference profile from this data "
                                                                  "(for bundles registered without one)."),
                version: Optional[str] = typer.Option(None, "--version", help="Reference version (default: "
                                                      "the served stable version, else champion)."),
                html: Optional[str] = typer.Option(None, "--html", help="Also write the HTML report here."),
                json_out: bool = typer.Option(False, "--json"),
                set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """Drift and data quality of a window of the prediction log against the reference profile.

    Exit 0: no drift; 9: drift detected (the report is written either way); 10: the window
    or the reference cannot be monitored (empty window, log of another model, no profile).
    """
    from mlops_ray.errors import ExitCode
    from mlops_ray.monitor.drift import run_monitor
    with _guard(json_out):
        cfg = _load(config, set_)
        rep = run_monitor(cfg, since=since, window=window, data=data, reference_data=reference_data,
                          ref=version, verbose=State.verbose, progress=_progress(json_out) or (lambda s, m: None))
        if html:
            from mlops_ray.monitor.report import write_report
            write_report({"pipeline": cfg.name, "generated": rep["created"], "drift": rep}, html)
        if json_out:
            _emit_json(rep)
        else:
            _print_drift(rep, html)
    if rep["drift"]:
        raise typer.Exit(ExitCode.DRIFT)


@app.command("feedback")
def feedback_cmd(config: str = typer.Argument(..., help="Pipeline YAML."),
                 labels: str = typer.Option(..., "--labels", help="Parquet or CSV with request_id (or data.id_column) "
                                                                  "and the label column."),
                 new_classes: bool = typer.Option(False, "--new-classes",
                                                  help="Store labels of classes no version knows (a class that "
                                                       "is new in the world; scored as wrong answers). Without "
                                                       "it such a file is refused, as a misspelling would be."),
                 since: Optional[str] = typer.Option(None, "--since", help="Re-choose the decision threshold on "
                                                     "the labelled predictions since then: a duration back from "
                                                     "now (7d) or an ISO time; default: all of the version's."),
                 json_out: bool = typer.Option(False, "--json"),
                 set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """Labels arrived: store them, report label completeness and the live metric per version, and
    re-choose each served binary version's decision threshold on its labelled predictions."""
    from mlops_ray.monitor import thresholds
    from mlops_ray.monitor.drift import window_bounds
    from mlops_ray.monitor.labels import feedback
    with _guard(json_out):
        cfg = _load(config, set_)
        start = window_bounds(cfg, since, None)[0].timestamp() if since else None
        res = feedback(cfg, labels, new_classes=new_classes)
        res["thresholds"] = thresholds.follow_base_rate(cfg, since=start)
        if json_out:
            _emit_json(res)
            return
        out.print(f"[green]✓[/] {res['labels']:,} labels stored (key {res['key']}); {res['duplicates']:,} "
                  "duplicates (the last one counts)")
        if res["unknown_ids"]:
            mon = cfg.monitor
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


@app.command("loop")
def loop_cmd(config: str = typer.Argument(..., help="Pipeline YAML."),
             once: bool = typer.Option(False, "--once", help="One iteration, then exit."),
             interval: str = typer.Option("10m", "--interval", help="Time between iterations."),
             since: Optional[str] = typer.Option(None, "--since", help="Monitor window (default monitor.window)."),
             json_out: bool = typer.Option(False, "--json"),
             set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """monitor → (trigger?) → retrain → gate → rollout, until stopped (SIGTERM stops between steps)."""
    from mlops_ray.lifecycle.loop import run_loop
    with _guard(json_out):
        cfg = _load(config, set_)
        entries = run_loop(cfg, once=once, interval=interval, since=since, verbose=State.verbose,
                           progress=_progress(json_out) or (lambda s, m: None))
        if json_out:
            _emit_json(entries)
            return
        for e in entries:
            what = e.get("outcome") or ("no retrain" if not e.get("trigger") else e["action"])
            out.print(f"{e['time'][:19]}  {e['action']}: {what}" + (f" (version {e['version']})" if e.get("version")
                                                                    else ""))


@app.command("report")
def report_cmd(config: str = typer.Argument(..., help="Pipeline YAML."),
               html: str = typer.Option(..., "--html", help="Where to write the self-contained HTML report."),
               version: Optional[str] = typer.Option(None, "--version", help="Version (default: champion)."),
               run: Optional[str] = typer.Option(None, "--run", help="MLflow run id instead of a version."),
               set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """One HTML file: validation, tuning, importance, ROC/PR, drift, rollout timeline, loop decisions."""
    from mlops_ray.monitor.report import write_report
    from mlops_ray.lifecycle.reports import report_context
    with _guard(False):
        cfg = _load(config, set_)
        ctx = report_context(cfg, version=version, run_id=run)
        write_report(ctx, html)
        out.print(f"[green]✓[/] report of {ctx['model']['name']} version {ctx['model']['version']}: {html}")


@app.command("demo")
def demo_cmd(config: str = typer.Argument("configs/quickstart.yaml", help="Pipeline YAML."),
             data_dir: str = typer.Option("data/demo", "--data-dir", help="Where months 1 and 2 are written."),
             rows: int = typer.Option(50_000, "--rows", min=2000, help="Rows per month."),
             html: str = typer.Option("demo-report.html", "--html", help="The report written at the end."),
             set_: Optional[List[str]] = typer.Option(None, "--set", help="Override: key.path=value")):
    """The whole loop: train v1, serve it, drifted traffic, labels, monitor, retrain v2, canary, promote, report."""
    from mlops_ray.lifecycle.demo import demo_paths, run_demo
    with _guard(False):
        cfg = _load(config, set_)
        say = _progress(False)
        res = run_demo(cfg, data_dir, rows, say=say, verbose=State.verbose, html=html)
        times = ", ".join(f"{k} {v:.0f}s" for k, v in res["timings_s"].items())
        out.print(f"[green]✓[/] demo done in {res['seconds']:.0f} s ({times}); report {html}")
        month1 = os.path.abspath(demo_paths(data_dir)["month1"])
        out.print(_demo_next_steps(res, config, html, any(os.path.abspath(s) == month1 for s in cfg.data.sources)),
                  markup=False)


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


def _rel(path: str) -> str:
    """``path`` relative to the current directory when it lies under it (shorter commands to copy)."""
    if "://" in path or not os.path.isabs(path):
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# ---------------------------------------------------------------------- jobs
@app.command("submit")
def submit_cmd(config: str = typer.Argument(..., help="Pipeline YAML, inside the project."),
               command: Optional[List[str]] = typer.Argument(None, metavar="-- COMMAND [ARGS]...",
                                                             help="The mlops-ray command to run on the cluster."),
               address: Optional[str] = typer.Option(None, "--address", help="The cluster's dashboard URL (default: "
                                                     "RAY_API_SERVER_ADDRESS, an http RAY_ADDRESS, else "
                                                     "http://127.0.0.1:8265)."),
               wait: bool = typer.Option(False, "--wait", help="Stream the job's logs; exit with its outcome."),
               exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Leave this out of the upload "
                                                           "(gitignore syntax, from the project root); repeatable."),
               project_dir: Optional[str] = typer.Option(None, "--project-dir", help="Project root to upload "
                                                         "(default: where pyproject.toml is, at or above here)."),
               max_upload_mib: float = typer.Option(100.0, "--max-upload-mib", min=0.001,
                                                    help="Refuse a bigger upload (the dashboard takes 100 MiB)."),
               json_out: bool = typer.Option(False, "--json", help="Result as JSON; job logs then go to stderr.")):
    """Run an mlops-ray command on a Ray cluster through the Jobs API; the project root is its working_dir.

    mlops-ray submit configs/quickstart.yaml --address http://127.0.0.1:8265 --wait -- run

    Exit 0: submitted (with --wait: SUCCEEDED); 11: the job FAILED or was STOPPED; 7: the
    dashboard is unreachable, is not a Ray dashboard or refuses the token; 2: bad command or upload.
    """
    from mlops_ray.cluster import jobs
    with _guard(json_out):
        cfg = _load(config, jobs.set_args(command or []))
        logs = err.file if json_out else sys.stdout

        def on_log(chunk: str) -> None:
            logs.write(chunk)
            logs.flush()

        def on_submitted(res: dict) -> None:
            if not json_out:
                err.print(f"submitted job {res['job_id']} ({res['dashboard_url']}); following its logs "
                          f"(Ctrl-C stops following, not the job: {res['follow'][2]})", markup=False)
        res = jobs.submit(cfg, config, command or [], address=address, wait=wait, excludes=exclude or [],
                          max_upload_bytes=int(max_upload_mib * 1024 ** 2), project_dir=project_dir,
                          verbose=State.verbose, on_log=on_log, on_submitted=on_submitted)
        if json_out:
            _emit_json(res)
        elif wait:
            out.print(f"[green]✓[/] job {res['job_id']} SUCCEEDED in {res['seconds']['done']:.1f} s")
        else:
            out.print(f"[green]✓[/] submitted job {res['job_id']} ({res['upload_files']:,} files, "
                      f"{res['upload_bytes'] / 1024 ** 2:.1f} MiB from {res['working_dir']})")
            out.print(f"  dashboard: {res['dashboard_url']}\n  follow it:\n" +
                      "\n".join(f"    {c}" for c in res["follow"]), markup=False)


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


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)



def main() -> None:
    # standalone mode: click maps usage errors to exit 2 and typer.Exit(code) to that code
    app(prog_name="mlops-ray")


if __name__ == "__main__":
    main()
