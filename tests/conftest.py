"""Shared fixtures, and the tiers. Tests mirror the code (``tests/<package>/test_<module>.py``);
each file says its tier with ``pytestmark``: ``unit`` (no Ray), ``ray`` (the one local Ray of the
session, started by the first such test), ``slow`` (subprocesses that start their own Ray),
``cluster`` (a multi-node Ray on this host). Tiers run in that order reversed, as the folders
did before: cluster, slow, ray, unit — so no test that starts its own Ray runs beside the
session's. Shared helpers live in ``tests/support``."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from tests.support.cluster import LocalCluster, cluster_ports, start_or_fail
from tests.support.configs import make_bundle, write_parquet

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


TIERS = ("cluster", "slow", "ray", "unit")        # the order they run in


def tier_of(item) -> str | None:
    marks = {m.name for m in item.iter_markers()}
    if "cluster" in marks:
        return "cluster"
    if "ray" in marks:
        return "ray"
    return "slow" if "slow" in marks else "unit" if "unit" in marks else None


def pytest_collection_modifyitems(config, items):
    untiered = sorted({str(item.fspath) for item in items if tier_of(item) is None})
    if untiered:
        raise pytest.UsageError("these test files set no tier (pytestmark = pytest.mark.unit, ray, slow or "
                                f"cluster): {', '.join(untiered)}")
    items.sort(key=lambda item: TIERS.index(tier_of(item)))          # stable: file order within a tier


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (4 logical CPUs) for every ``ray`` test, stopped at the end of the session."""
    from mlops_ray.config import RayConfig
    from mlops_ray.runtime import ray_runtime
    with ray_runtime(RayConfig(num_cpus=4)) as info:
        yield info


@pytest.fixture(autouse=True)
def _ray_for_the_ray_tier(request):
    if request.node.get_closest_marker("ray") is not None:
        request.getfixturevalue("ray_session")


@pytest.fixture(scope="module")
def two_nodes():
    """A started ``LocalCluster`` (tests/support/cluster.py): ``.address``, ``.env`` (for drivers),
    ``.node_ids()`` (name -> Ray node id, nodes told apart by their ``mlops_node_<name>`` resource),
    ``.kill_node("w1")`` (SIGKILL its process group). Every process it started is stopped at the end,
    by process group. Drivers never run in the pytest process: tests start ``python -m mlops_ray ...``
    as a subprocess with ``two_nodes.env`` and ``ray.address`` set."""
    cluster = LocalCluster(names=("head", "w1"), num_cpus=2, **cluster_ports())
    start_or_fail(cluster)
    with cluster:
        print(f"2-node cluster at {cluster.address}: nodes up in {cluster.start_s} s, logs in {cluster.root}")
        yield cluster


@pytest.fixture(scope="session")
def small_df() -> pd.DataFrame:
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    return generate_chunk(SynthSpec(rows=4000, seed=3), 0, 4000)


@pytest.fixture
def parquet_dir(small_df, tmp_path) -> Path:
    return write_parquet(small_df, tmp_path / "data", parts=2)


@pytest.fixture(scope="session")
def bundle_dir(small_df, tmp_path_factory) -> str:
    """One real bundle per test session (read-only: copy it before changing it)."""
    return make_bundle(small_df, tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture
def not_http_port():
    """A loopback port whose listener answers every connection with bytes that are not HTTP (as
    a Ray gRPC port does when an HTTP client knocks), then hangs up."""
    import socket
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x04\x00\x40\x00\x00\xfe\x01\n\n")
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    srv.close()
