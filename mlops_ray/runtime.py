"""The one place that starts or connects Ray.

``ray_runtime(cfg.ray)`` is a context manager: with no ``ray.address`` it starts an
embedded local Ray with an explicit logical-CPU budget; with an address it connects;
when Ray is already initialised in this process (tests, notebooks, a Ray job's driver)
it reuses it. It shuts down only what it started. Ray's own logs stay in its session
log directory; the user sees them with ``--verbose``.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from mlops_ray.config import RayConfig
from mlops_ray.errors import ConfigError, ResourceError
# Imported where used, for their import cost (python -X importtime): optuna 0.2 s, ray 0.7 s.

log = logging.getLogger(__name__)


def default_num_cpus() -> int:
    """Logical CPUs for an embedded Ray: at least 4, or twice the cores.

    On a 2-core machine a Tune trial, a Train worker and a Data read task each hold a CPU;
    with only 2 logical CPUs they can wait on each other forever (docs/architecture.md, Facts).
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
            # (on by default since 2.59) is what protects an embedded head. See docs/scaling.md.
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
        raise ConfigError(why)


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
        token = secrets.token_hex(32)
    path = os.path.expanduser(TOKEN_FILE)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:   # Ray's own generator writes it world-readable (umask 022); a token is a password
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:       # another process made one meanwhile: use it
        return
    with os.fdopen(fd, "w") as f:
        f.write(token)
