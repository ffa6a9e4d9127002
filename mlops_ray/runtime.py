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
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from mlops_ray.config import RayConfig
from mlops_ray.errors import ResourceError

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
    if not ray.is_initialized():
        level = logging.INFO if verbose else logging.ERROR
        common = dict(namespace=cfg.namespace, log_to_driver=verbose, logging_level=level,
                      runtime_env=cfg.runtime_env)
        if cfg.address:
            try:
                ray.init(address=cfg.address, **common)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ResourceError(
                    f"cannot connect to the Ray cluster at ray.address={cfg.address!r}: {e}. "
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
            ray.init(**kwargs, **common)
        started = True
    configure_data_context(verbose)
    try:
        res = ray.cluster_resources()
        ctx = ray.get_runtime_context()
        yield RuntimeInfo(
            address=getattr(ctx, "gcs_address", "") or "",
            started_here=started and not cfg.address,
            num_cpus=float(res.get("CPU", 0)),
            num_nodes=len([n for n in ray.nodes() if n.get("Alive")]),
        )
    finally:
        if started:
            ray.shutdown()


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
