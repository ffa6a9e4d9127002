"""Serving commands: `deploy`, `status`, `rollout` (and `rollout promote|rollback`), `serve stop`
and `serve build`. Each calls one function of ``mlops_ray.serve.control``.

In: a config path with ``--set`` overrides and the version to act on. Out: what serves (versions,
weights, addresses, traffic), the rollout's outcome (exit 5 when rolled back), or a Serve config.
"""
from __future__ import annotations

from typing import List, Optional

import typer

from mlops_ray.cli.options import ConfigArg, Json, Sets, State, _guard, _load
from mlops_ray.cli.render import (_emit_json, _print_build, _print_deploy, _print_rollout, _print_rollout_action,
                                  _print_status, _print_stop, _rollout_view, _say)
from mlops_ray.errors import ConfigError


def _control():
    """``mlops_ray.serve.control``, imported when a command runs: it costs ~90 ms (asyncio, ssl,
    pyarrow) that `mlops-ray --help` must not pay."""
    from mlops_ray.serve import control
    return control


def deploy_cmd(config: ConfigArg,
               version: Optional[str] = typer.Option(None, "--version", help="Registered version number to serve."),
               alias: Optional[str] = typer.Option(None, "--alias", help="Alias to serve (default: champion)."),
               force: bool = typer.Option(False, "--force", help="Serve it even if it was rejected."),
               json_out: Json = False,
               set_: Sets = None):
    """Serve a registered version on Ray Serve as the stable version.

    Without ray.address this starts a local Ray head that keeps running after the command
    (stop it with `mlops-ray serve stop CONFIG`). Serving an app that already runs switches
    its version live, without restarting replicas.
    """
    control = _control()
    with _guard(json_out):
        if version and alias:
            raise ConfigError("give --version or --alias, not both")
        cfg = _load(config, set_)
        res = control.deploy(cfg, version or (f"@{alias}" if alias else "champion"), verbose=State.verbose, force=force,
                             on_progress=None if json_out else _say)
        _emit_json(res) if json_out else _print_deploy(res, config)


def status_cmd(config: ConfigArg, json_out: Json = False, set_: Sets = None):
    """What serves: versions, weights, rollout phase, per-version traffic and errors."""
    control = _control()
    with _guard(json_out):
        cfg = _load(config, set_)
        # imported here: thresholds costs ~20 ms (numpy, the store) that `mlops-ray --help` must not pay
        from mlops_ray.monitor import thresholds
        # imported here: reports reach the registry and drift (scipy), ~0.8 s `--help` must not pay
        from mlops_ray.lifecycle.reports import monitor_summary
        res = control.status(cfg)
        res["monitor"] = monitor_summary(cfg)
        st = res.get("state") or {}
        res["thresholds"] = thresholds.recorded(cfg, [v for v in (st.get("stable"), st.get("canary")) if v])
        if json_out:
            _emit_json(res)
            return
        _print_status(res, cfg.name, {v: thresholds.describe(h[-1]) for v, h in res["thresholds"].items()})


def rollout_cmd(args: List[str] = typer.Argument(..., metavar="[promote|rollback] CONFIG",
                                                 help="Pipeline YAML, optionally after promote or rollback."),
                version: Optional[str] = typer.Option(None, "--version", help="Version to roll out."),
                force: bool = typer.Option(False, "--force", help="Roll it out even if the gate rejected it."),
                shadow: bool = typer.Option(False, "--shadow", help="Mirror traffic to it and compare; "
                                                                  "stable keeps answering."),
                json_out: Json = False,
                set_: Sets = None):
    """Roll --version out in rollout.steps, comparing it with stable at each step.

    Exit 0: promoted (alias champion moved); 5: rolled back (version tagged rejected).
    A controller that was stopped resumes where it was when started again.
    `rollout promote CONFIG` ends a rollout now; `rollout rollback CONFIG` stops it, or after
    a promotion returns to the previous version while it is still kept.
    """
    control = _control()
    with _guard(json_out):
        action = args[0] if args[0] in ("promote", "rollback") else None
        rest = args[1:] if action else args
        if len(rest) != 1 or (action is None and version is None) or (action and version):
            raise ConfigError("usage: mlops-ray rollout CONFIG --version N [--shadow], "
                              "mlops-ray rollout promote CONFIG, or mlops-ray rollout rollback CONFIG")
        cfg = _load(rest[0], set_)
        if action:
            res = control.rollout_action(cfg, action)
            _emit_json(res) if json_out else _print_rollout_action(res, action)
            return
        res = control.rollout(cfg, version, shadow=shadow, verbose=State.verbose,
                              on_progress=_rollout_view(cfg, json_out), force=force)
        _emit_json(res) if json_out else _print_rollout(res, cfg)


def serve_stop(config: ConfigArg, json_out: Json = False, set_: Sets = None):
    """Delete the app (replicas flush their prediction logs) and stop the local Ray head it ran on."""
    control = _control()
    with _guard(json_out):
        res = control.stop(_load(config, set_), verbose=State.verbose)
        _emit_json(res) if json_out else _print_stop(res)


def serve_build(config: ConfigArg,
                output: str = typer.Option("serve_config.yaml", "--out", help="Where to write the Serve config."),
                version: Optional[str] = typer.Option(None, "--version", help="Version to serve if none is deployed."),
                json_out: Json = False,
                set_: Sets = None):
    """Write a Serve config YAML for Ray's own `serve deploy`."""
    control = _control()
    with _guard(json_out):
        res = control.build(_load(config, set_), output, version or "champion")
        _emit_json(res) if json_out else _print_build(res)
