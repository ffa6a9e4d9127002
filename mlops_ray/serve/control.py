"""Serving lifecycle: deploy, status, stop, build a Serve config, and run rollouts.

Each function takes the config (and a registry), talks to Ray Serve through
``serve.head.serving_runtime`` and returns a plain dict for the CLI to print. A failed
deploy leaves the serving state and the running application as they were.
"""
from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Callable

import yaml

from mlops_ray.config import Config, literal_secrets
from mlops_ray.errors import ConfigError, MlopsError, ServingError
from mlops_ray.monitor.labels import LiveMetric
from mlops_ray.monitor.predlog import recover_orphans
from mlops_ray.registry import Registry
from mlops_ray.runtime import require_shared_store
from mlops_ray.serve import rollout as ro
from mlops_ray.serve import stats as st
from mlops_ray.serve.app import DEFAULT_LOADER, DEPLOYMENT, build_app, deployment_options
from mlops_ray.serve.endpoints import endpoints, port_holder
from mlops_ray.serve.head import serving_runtime, stop_head
from mlops_ray.storage.catalog import Catalog
from mlops_ray.storage.state import (ServingState, describe, read_head, read_state, remove_state, spool_dir, state_path,
                                     stats_dir, write_state)
from mlops_ray.storage.store import Store

# Imported where used, for their import cost (python -X importtime): ray 0.7 s.


def _registry(cfg: Config):
    return Registry(cfg.registry, cfg.store, cfg.name)


def _config_dict(cfg: Config) -> dict:
    """The config as Serve's app arguments (visible in `serve status` and the dashboard) and in
    `serve build` YAML: ``${ENV}`` references stay references; credentials written literally are
    refused rather than published."""
    found = literal_secrets(cfg)
    if found:
        raise ConfigError(f"{', '.join(found)} hold{'s' if len(found) == 1 else ''} a credential written into the "
                          "config; Serve publishes its app arguments (`serve status`, the dashboard) and "
                          "`serve build` writes them to a YAML file. Write it as an environment reference "
                          "instead, e.g. AWS_SECRET_ACCESS_KEY: ${AWS_SECRET_ACCESS_KEY}, and set the variable "
                          "where the replicas run")
    return cfg.portable_dict()


def resolve_servable(cfg: Config, registry, ref: str, *, force: bool = False, by_alias: bool = False) -> str:
    """Version behind ``ref``, checked to load as a bundle before anything changes. A version the
    gate rejected is refused unless ``force``; reached through an alias (``by_alias``), so is one
    whose rollout was rolled back (an explicit ``--version`` may retry a rollout)."""
    version = registry.resolve(ref)
    if not force:
        tags = registry.version_tags(version)
        why = (tags.get("rejected") or "by the gate") if tags.get("gate") == "rejected" else None
        if why is None and by_alias and tags.get("rollout") == "rejected":
            why = f"its rollout was rolled back: {tags.get('rollout_reason', 'no reason recorded')}"
        if why:
            raise ServingError(f"version {version} ({ref}) was rejected ({why[:300]}); serving it would put a "
                               f"model that failed its checks in front of traffic — pass --force to do it anyway")
    registry.load_bundle(version)
    return version


def app_routes() -> dict[str, str]:
    """app name -> route prefix of the Serve apps on the connected cluster (Serve's own details;
    ``serve.status()`` does not carry routes)."""
    try:
        from ray.serve.context import _get_global_client
        details = _get_global_client().get_serve_details()
    except Exception:                  # noqa: BLE001 - an older/newer Serve: skip the check
        return {}
    return {n: a.get("route_prefix") for n, a in (details.get("applications") or {}).items()
            if a.get("route_prefix") is not None}


def check_route(cfg: Config, routes: dict[str, str]) -> None:
    """Two apps on one cluster must not share a route prefix (Serve would route one's traffic
    to the other, or refuse the second)."""
    for name, other in routes.items():
        if name != cfg.name and other.rstrip("/") == cfg.serve.route_prefix.rstrip("/"):
            raise ServingError(f"the cluster already serves app {name!r} on route {other!r}; give this "
                               f"pipeline a route of its own: serve.route_prefix: /{cfg.name} (it then answers "
                               f"/{cfg.name}/predict)")


def deploy(cfg: Config, ref: str = "champion", *, loader: str = DEFAULT_LOADER, faults: dict | None = None,
           verbose: bool = False, on_progress: Callable[[str], None] | None = None, force: bool = False) -> dict:
    """Serve ``ref`` (version, alias or models:/ URI) as the stable version. Starts a local Ray head
    when there is no ray.address and none is running; reuses the running app (weights switch live)."""
    say = on_progress or (lambda _m: None)
    if not cfg.ray.address and read_head(cfg.store, cfg.name) is None:    # a new local head will bind the port
        holder = port_holder(cfg.serve.host, cfg.serve.port)
        if holder:
            raise ServingError(f"serve.port {cfg.serve.port} on {cfg.serve.host} is already in use by {holder}; "
                               f"two servers on one port split its connections between them. Give pipeline "
                               f"{cfg.name!r} a port of its own (--set serve.port=N, or in the config)")
    app_args = _config_dict(cfg)                 # refuses literal credentials before anything changes
    Store(cfg.store).check_writable(cfg.name)
    registry = _registry(cfg)
    version = resolve_servable(cfg, registry, ref, force=force, by_alias=not str(ref).isdigit())
    path = state_path(cfg.store, cfg.name)
    old = read_state(path)
    if old is not None and old.phase in ("CANARY", "SHADOW"):
        raise ServingError(f"a rollout of version {old.canary} is in progress ({old.phase}); finish it or run "
                           "`mlops-ray rollout rollback CONFIG` before deploying")
    new = ServingState(name=registry.model_name, stable=version, history=list(old.history) if old else [],
                       revision=old.revision if old else 0)
    if old is not None and old.stable != version:
        new.previous, new.previous_until = old.stable, time.time() + cfg.rollout.keep_previous_s
    new.event("deployed", version=version)
    t0 = time.time()
    with serving_runtime(cfg, start=True, verbose=verbose) as info:
        from ray import serve
        say(f"Ray at {info['address']}" + (" (local head started for serving)" if info["local_head"] else ""))
        require_shared_store(cfg)
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        check_route(cfg, app_routes())
        write_state(path, new, expect=new.revision)     # a deploy racing a controller loses, changing nothing
        try:
            serve.run(build_app(app_args, loader, faults), name=cfg.name, route_prefix=cfg.serve.route_prefix,
                      blocking=False)
            if not cfg.ray.address:             # a remote cluster's HTTP address is not ours to probe
                wait_for_version(cfg, version)
        except Exception as e:
            if old is not None:                 # a failed deploy changes nothing
                old.event("deploy_failed", version=version)
                write_state(path, old)
            else:
                remove_state(path)
            if info["local_head"] and old is None:
                serve.shutdown()
            msg = e.message if isinstance(e, MlopsError) else f"{type(e).__name__}: {e}"
            raise ServingError(f"deploying version {version} failed: {msg}. The previous serving state was "
                               f"kept; replica logs are in the Ray session's logs/serve directory "
                               f"(`mlops-ray --verbose deploy ...` shows them)") from None
    out = {"version": version, "model": registry.model_name, "seconds": round(time.time() - t0, 1),
           "ray_address": info["address"], **endpoints(cfg)}
    if info["local_head"]:
        out["local_head"] = {"pid": info["local_head"]["pid"], "log": info["local_head"]["log"],
                             "stop": "mlops-ray serve stop CONFIG"}
    return out


def wait_for_version(cfg: Config, version: str, timeout_s: float = 60.0) -> None:
    """Until the app answers /version with ``version`` as stable (replicas follow the state file)."""
    url = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}/version"
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                last = json.loads(r.read())
                if last.get("stable") == version:
                    return
        except Exception as e:      # proxy still starting
            last = repr(e)
        time.sleep(0.25)
    raise ServingError(f"the app did not switch to version {version} within {timeout_s:g} s (last answer: {last})")


def status(cfg: Config) -> dict:
    """The serving state from the store, plus the live application when its Ray is reachable."""
    state = read_state(state_path(cfg.store, cfg.name))
    out: dict = {"name": cfg.name, "summary": describe(state), "state": state.to_dict() if state else None}
    if state is not None:
        out["state"].pop("baseline", None)
        out["state"]["history"] = state.history[-10:]
    snaps = st.read_snapshots(stats_dir(cfg.store, cfg.name))
    totals = st.totals(snaps)
    out["versions"] = {v: s.summary() for v, s in totals.items()}
    out["replicas"] = st.live_replicas(snaps)
    if state is not None and state.phase in ("CANARY", "SHADOW") and state.baseline:
        win = st.window(snaps, state.baseline)
        out["step_window"] = {v: s.summary() for v, s in win.items()}
    head = read_head(cfg.store, cfg.name)
    out["running"] = False
    if head is None and not cfg.ray.address:
        out["serve"] = "no local Ray head is running (start serving with `mlops-ray deploy CONFIG`)"
        return out
    try:
        with serving_runtime(cfg) as info:
            from ray import serve
            s = serve.status()
            app = s.applications.get(cfg.name)
            out["ray_address"] = info["address"]
            if app is not None:
                out["running"] = str(app.status) in ("RUNNING", "ApplicationStatus.RUNNING")
                out["serve"] = {"status": str(app.status), "message": app.message,
                                "deployments": {n: {"status": str(d.status),
                                                    "replicas": {str(k): v for k, v in d.replica_states.items()}}
                                                for n, d in app.deployments.items()}}
                out.update(endpoints(cfg))
            else:
                out["serve"] = f"no Serve application {cfg.name!r} on this cluster"
    except MlopsError as e:
        out["serve"] = e.message
    return out


def stop(cfg: Config, *, verbose: bool = False) -> dict:
    """Delete the app (replicas flush their prediction logs) and stop the local head if we started it."""
    head = read_head(cfg.store, cfg.name)
    out = {"app_deleted": False, "head_stopped": False}
    if head is None and not cfg.ray.address:
        out["message"] = "nothing to stop: no local Ray head is running for this store"
        return out
    with serving_runtime(cfg, verbose=verbose):
        from ray import serve
        if cfg.name in serve.status().applications:
            serve.delete(cfg.name)
            out["app_deleted"] = True
        others = [a for a in serve.status().applications if a != cfg.name]
        if head is not None and not others:
            serve.shutdown()
    if head is not None and not others:
        out["head_stopped"] = stop_head(head)
    out["recovered_log_records"] = recover_spools(cfg)
    return out


def recover_spools(cfg: Config) -> int:
    """Turn prediction-log spools that stopped replicas left behind into Parquet. Replicas flush
    on graceful shutdown and a starting replica recovers its dead neighbours' spools, but after
    the last replica of a store is gone nobody else would. This node's spool: for an object store
    the other nodes' spools are recovered by their next replica (or are lost with the node)."""
    spool = spool_dir(cfg.store, cfg.name)
    if not os.path.isdir(spool):
        return 0
    return recover_orphans(spool, Catalog(cfg.store, cfg.name).predlog_dir())


def build(cfg: Config, out_path: str, ref: str = "champion") -> dict:
    """Write a Serve config YAML for Ray's own `serve deploy`. Records ``ref`` as the stable version
    in the serving state if nothing is deployed yet (replicas route by that state)."""
    path = state_path(cfg.store, cfg.name)
    state = read_state(path)
    if state is None:
        registry = _registry(cfg)
        version = resolve_servable(cfg, registry, ref)
        state = write_state(path, ServingState(name=registry.model_name, stable=version))
    opts = deployment_options(cfg)
    dep = {k: v for k, v in opts.items() if k != "name"}
    doc = {"proxy_location": "EveryNode",
           "http_options": {"host": cfg.serve.host, "port": cfg.serve.port},
           "applications": [{"name": cfg.name, "route_prefix": cfg.serve.route_prefix, "import_path": "mlops_ray.serve.app:app_builder",
                             "args": {"config": _config_dict(cfg)},
                             "deployments": [{"name": DEPLOYMENT, **dep}]}]}
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        f.write("# Written by `mlops-ray serve build`; deploy with `serve deploy " + os.path.basename(out_path) + "`\n")
        yaml.safe_dump(doc, f, sort_keys=False)
    return {"path": out_path, "stable": state.stable, "app": cfg.name}


def rollout(cfg: Config, ref: str, *, shadow: bool = False, verbose: bool = False,
            on_progress=None, poll_s: float = 1.0, force: bool = False) -> dict:
    """Roll ``ref`` out step by step (or mirror it with ``shadow``); see rollout.run_rollout."""
    if read_state(state_path(cfg.store, cfg.name)) is None:
        raise ServingError(f"nothing is deployed for {cfg.name!r}; run `mlops-ray deploy CONFIG` first")
    if read_head(cfg.store, cfg.name) is None and not cfg.ray.address:
        raise ServingError(f"nothing is serving {cfg.name!r}: no local Ray head is running; "
                           "run `mlops-ray deploy CONFIG` first")
    registry = _registry(cfg)
    version = resolve_servable(cfg, registry, ref, force=force)
    return ro.run_rollout(cfg, registry, version, shadow=shadow, poll_s=poll_s, on_progress=on_progress,
                          live_metric=LiveMetric(cfg))


def rollout_action(cfg: Config, action: str) -> dict:
    return ro.manual(cfg, _registry(cfg), action)
