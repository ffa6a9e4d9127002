"""Monitoring and the retrain loop: `monitor`, `feedback`, `loop`, `report`, and `demo` (the
whole loop once, on synthetic data).

In: a config path with ``--set`` overrides, a window of the prediction log or a data set, a file
of labels. Out: the drift report (exit 9 on drift), label completeness and live metrics, the
loop's decisions, a self-contained HTML report.
"""
from __future__ import annotations

import os
from typing import Optional

import typer

from mlops_ray.cli.options import ConfigArg, Json, Sets, State, _guard, _load
from mlops_ray.cli.render import (_emit_json, _print_demo, _print_drift, _print_feedback, _print_loop,
                                  _print_report, _progress)
from mlops_ray.errors import ExitCode
from mlops_ray.monitor.report import write_report


def monitor_cmd(config: ConfigArg,
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
                json_out: Json = False,
                set_: Sets = None):
    """Drift and data quality of a window of the prediction log against the reference profile.

    Exit 0: no drift; 9: drift detected (the report is written either way); 10: the window
    or the reference cannot be monitored (empty window, log of another model, no profile).
    """
    # imported here: the drift tests import scipy (~0.7 s), which `mlops-ray --help` must not pay
    from mlops_ray.monitor.drift import run_monitor
    with _guard(json_out):
        cfg = _load(config, set_)
        rep = run_monitor(cfg, since=since, window=window, data=data, reference_data=reference_data,
                          ref=version, verbose=State.verbose, progress=_progress(json_out) or (lambda s, m: None))
        if html:
            write_report({"pipeline": cfg.name, "generated": rep["created"], "drift": rep}, html)
        _emit_json(rep) if json_out else _print_drift(rep, html)
    if rep["drift"]:
        raise typer.Exit(ExitCode.DRIFT)


def feedback_cmd(config: ConfigArg,
                 labels: str = typer.Option(..., "--labels", help="Parquet or CSV with request_id (or data.id_column) "
                                                                  "and the label column."),
                 new_classes: bool = typer.Option(False, "--new-classes",
                                                  help="Store labels of classes no version knows (a class that "
                                                       "is new in the world; scored as wrong answers). Without "
                                                       "it such a file is refused, as a misspelling would be."),
                 since: Optional[str] = typer.Option(None, "--since", help="Re-choose the decision threshold on "
                                                     "the labelled predictions since then: a duration back from "
                                                     "now (7d) or an ISO time; default: all of the version's."),
                 json_out: Json = False,
                 set_: Sets = None):
    """Labels arrived: store them, report label completeness and the live metric per version, and
    re-choose each served binary version's decision threshold on its labelled predictions."""
    # imported here: monitor.drift imports scipy (~0.7 s); labels and thresholds add ~60 ms (ssl, numpy, the
    # store). `mlops-ray --help` must not pay for them.
    from mlops_ray.monitor import thresholds
    from mlops_ray.monitor.drift import window_bounds
    from mlops_ray.monitor.labels import feedback
    with _guard(json_out):
        cfg = _load(config, set_)
        start = window_bounds(cfg, since, None)[0].timestamp() if since else None
        res = feedback(cfg, labels, new_classes=new_classes)
        res["thresholds"] = thresholds.follow_base_rate(cfg, since=start)
        _emit_json(res) if json_out else _print_feedback(res, cfg.monitor)


def loop_cmd(config: ConfigArg,
             once: bool = typer.Option(False, "--once", help="One iteration, then exit."),
             interval: str = typer.Option("10m", "--interval", help="Time between iterations."),
             since: Optional[str] = typer.Option(None, "--since", help="Monitor window (default monitor.window)."),
             json_out: Json = False,
             set_: Sets = None):
    """monitor → (trigger?) → retrain → gate → rollout, until stopped (SIGTERM stops between steps)."""
    with _guard(json_out):
        cfg = _load(config, set_)
        # imported here: the loop reaches the pipeline, drift (scipy) and Ray, ~1 s `--help` must not pay
        from mlops_ray.lifecycle.loop import run_loop
        entries = run_loop(cfg, once=once, interval=interval, since=since, verbose=State.verbose,
                           progress=_progress(json_out) or (lambda s, m: None))
        _emit_json(entries) if json_out else _print_loop(entries)


def report_cmd(config: ConfigArg,
               html: str = typer.Option(..., "--html", help="Where to write the self-contained HTML report."),
               version: Optional[str] = typer.Option(None, "--version", help="Version (default: champion)."),
               run: Optional[str] = typer.Option(None, "--run", help="MLflow run id instead of a version."),
               set_: Sets = None):
    """One HTML file: validation, tuning, importance, ROC/PR, drift, rollout timeline, loop decisions."""
    with _guard(False):
        cfg = _load(config, set_)
        # imported here: reports reach the registry and drift (scipy), ~0.8 s `--help` must not pay
        from mlops_ray.lifecycle.reports import report_context
        ctx = report_context(cfg, version=version, run_id=run)
        write_report(ctx, html)
        _print_report(ctx, html)


def demo_cmd(config: ConfigArg = "configs/quickstart.yaml",
             data_dir: str = typer.Option("data/demo", "--data-dir", help="Where months 1 and 2 are written."),
             rows: int = typer.Option(50_000, "--rows", min=2000, help="Rows per month."),
             html: str = typer.Option("demo-report.html", "--html", help="The report written at the end."),
             set_: Sets = None):
    """The whole loop: train v1, serve it, drifted traffic, labels, monitor, retrain v2, canary, promote, report."""
    # imported here: the demo costs ~20 ms more (its traffic client: http, ssl), which `mlops-ray --help`
    # must not pay
    from mlops_ray.lifecycle.demo import demo_paths, run_demo
    with _guard(False):
        cfg = _load(config, set_)
        res = run_demo(cfg, data_dir, rows, say=_progress(False), verbose=State.verbose, html=html)
        month1 = os.path.abspath(demo_paths(data_dir)["month1"])
        _print_demo(res, config, html, any(os.path.abspath(s) == month1 for s in cfg.data.sources))
