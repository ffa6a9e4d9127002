"""Fixtures of the multi-node tier: a 2-node Ray cluster on this host (``ray start``, a head and
one worker, 2 CPUs each), started once per module.

Drivers never run in the pytest process: tests start ``python -m mlops_ray ...`` (or a
``python -c`` script) as a subprocess with the cluster's environment (``two_nodes.env``: token
authentication) and ``ray.address`` set, so a Ray the pytest process may hold (tests/ray starts
one) is untouched. Ports: a free block found when the module starts (``cluster_ports``).
"""
from __future__ import annotations

import pytest

from tests.cluster.nodes import LocalCluster
from tests.cluster.ports import cluster_ports, start_or_fail


@pytest.fixture(scope="module")
def two_nodes():
    """A started ``LocalCluster``: ``.address``, ``.env`` (for drivers), ``.node_ids()`` (name -> Ray
    node id, nodes told apart by their ``mlops_node_<name>`` resource), ``.kill_node("w1")`` (SIGKILL
    its process group). Every process it started is stopped at the end, by process group."""
    cluster = LocalCluster(names=("head", "w1"), num_cpus=2, **cluster_ports())
    start_or_fail(cluster)
    with cluster:
        print(f"2-node cluster at {cluster.address}: nodes up in {cluster.start_s} s, logs in {cluster.root}")
        yield cluster
