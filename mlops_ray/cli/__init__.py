"""The command line `mlops-ray`: thin. Each command loads the config, calls one API function,
prints the result (a table, or JSON with --json) and exits with the outcome's code.

This file is the command table. The commands live by area: ``data`` (config check/schema, data
synth, validate, features), ``train`` (run), ``serving`` (deploy, status, rollout, serve stop/build),
``batch`` (predict), ``monitoring`` (monitor, feedback, loop, report, demo) and ``cluster`` (cluster
check, submit); ``options`` holds what they share (CONFIG, --set, --json, the global flags, config
loading, errors to exit codes) and ``render`` all they print.

Exit codes: 0 ok, 1 unexpected (a bug), 2 usage or config error, 3 data missing or
invalid, 4 gate rejected, 5 rollout aborted, 6 registry error, 7 not enough resources,
8 serving cannot do what was asked, 9 drift, 10 monitoring cannot
do what was asked, 11 a submitted job failed.
"""
from __future__ import annotations

import typer

from mlops_ray.cli import batch, cluster, data, monitoring, serving, train
from mlops_ray.cli.options import _Group, _main

app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mlops-ray: ingest, validate, featurize, tune, gate, register, serve and "
                       "monitor models on Ray.")
app.callback()(_main)
config_app = typer.Typer(no_args_is_help=True, help="Check a config or print its JSON Schema.")
data_app = typer.Typer(no_args_is_help=True, help="Data utilities.")
serve_app = typer.Typer(no_args_is_help=True, help="Serving lifecycle: stop, build a Serve config.")
cluster_app = typer.Typer(no_args_is_help=True, help="Cluster manifests (KubeRay, cluster launcher): check them.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(serve_app, name="serve")
app.add_typer(cluster_app, name="cluster")

# in the order `mlops-ray --help` lists them
config_app.command("check")(data.config_check)
config_app.command("schema")(data.config_schema)
data_app.command("synth")(data.data_synth)
app.command("validate")(data.validate_cmd)
app.command("features")(data.features_cmd)
app.command("run")(train.run_cmd)
app.command("deploy")(serving.deploy_cmd)
app.command("status")(serving.status_cmd)
app.command("rollout")(serving.rollout_cmd)
serve_app.command("stop")(serving.serve_stop)
serve_app.command("build")(serving.serve_build)
app.command("predict")(batch.predict_cmd)
app.command("monitor")(monitoring.monitor_cmd)
app.command("feedback")(monitoring.feedback_cmd)
app.command("loop")(monitoring.loop_cmd)
app.command("report")(monitoring.report_cmd)
app.command("demo")(monitoring.demo_cmd)
app.command("submit")(cluster.submit_cmd)
cluster_app.command("check")(cluster.cluster_check)


def main() -> None:
    # standalone mode: click maps usage errors to exit 2 and typer.Exit(code) to that code
    app(prog_name="mlops-ray")
