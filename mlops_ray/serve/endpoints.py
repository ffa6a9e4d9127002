"""Where a pipeline's serving app answers: Serve's proxy on ``serve.port`` and each replica's own
port (direct ingress), found by asking, fastest first; and who holds a port when it is taken.

In: the config (``serve.host``, ``serve.port``, ``serve.ingress``). Out: plain dicts and strings.
Nothing here talks to Ray, so the CLI, the rollout controller and the benchmarks all call it.
"""
from __future__ import annotations

import http.client
import json
import socket
import urllib.request

from mlops_ray.config import Config


def endpoints(cfg: Config) -> dict:
    """Where to send requests: the Serve proxy on serve.port (``url``), the replicas' own ports (direct
    ingress, allocated from serve.port + 1, found by asking each candidate port for /healthz), and
    ``addresses``: all of them, the fastest first (``ordered_addresses``)."""
    prefix = cfg.serve.route_prefix.rstrip("/")
    out = {"url": f"http://{cfg.serve.host}:{cfg.serve.port}{prefix}/predict", "direct": []}
    if cfg.serve.direct_ingress:
        out["direct"] = _direct_ports(cfg)
    out["addresses"] = ordered_addresses(out["url"], out["direct"], cfg.serve.ingress)
    return out


def ordered_addresses(url: str, direct: list[str], ingress: str) -> list[dict]:
    """Every address, the fastest that keeps working first. With ``serve.ingress: haproxy`` serve.port
    forwards straight to the replicas' ports and survives replica restarts: it leads. With Serve's
    Python proxy it reaches about a tenth of a replica's own port (docs/benchmarks.md, benchmarks/serving.py), so
    the replicas' ports lead and the proxy, the address that stays whatever the replicas do, follows
    (a restarted replica usually takes its port back, ports are not quarantined on a local head, but
    Serve may hand it another one when it asks before the dead replica's port is pruned)."""
    if ingress == "haproxy":
        return [{"url": url, "kind": "haproxy", "note": "HAProxy to every replica"}] + [
            {"url": u, "kind": "direct", "note": "direct to one replica"} for u in direct]
    return [{"url": u, "kind": "direct", "note": "direct to one replica, fastest"} for u in direct] + [
        {"url": url, "kind": "proxy", "note": "Serve's proxy to every replica"
                                             + (", about a tenth of the direct port's throughput" if direct else "")}]


def _direct_ports(cfg: Config) -> list[str]:
    found = []
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    for port in range(cfg.serve.port + 1, cfg.serve.port + 65):
        try:
            with socket.create_connection((host, port), timeout=0.2):
                pass
            with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=1) as r:
                health = json.loads(r.read())
                if "replica" in health and health.get("pipeline") == cfg.name:    # not another pipeline's
                    found.append(f"http://{host}:{port}/predict")
        except (OSError, ValueError, http.client.HTTPException):   # not HTTP: e.g. a Ray gRPC port in the range
            continue
    return found


def port_holder(host: str, port: int) -> str | None:
    """Who listens on ``host:port``: None when nobody does; else what its /healthz says, if anything."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    try:
        with socket.create_connection((host, port), timeout=0.5):
            pass
    except OSError:
        return None
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as r:
            name = json.loads(r.read()).get("pipeline")
            return f"the serving app of pipeline {name!r}" if name else "another HTTP server"
    except Exception:                  # noqa: BLE001 - anything that is not our app
        return "another process"
