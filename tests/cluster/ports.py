"""Ports for the multi-node tier's clusters: a free block searched when a module starts."""
from __future__ import annotations

from tests.cluster.nodes import PORTS_PER_NODE, LocalCluster
from tests.conftest import missing
from tests.http_load import free_range


def cluster_ports(nodes: int = 2, worker_ports: int = 25) -> dict:
    """``base`` and ``worker_base`` for a LocalCluster of ``nodes``: one free block for both (the
    service ports, then each node's worker ports), searched now rather than fixed numbers another
    run may hold."""
    services = nodes * PORTS_PER_NODE
    try:
        base = free_range(services + nodes * worker_ports)
    except RuntimeError as e:
        missing(str(e))
    return {"base": base, "worker_base": base + services, "worker_ports": worker_ports}


def start_or_fail(cluster: LocalCluster):
    """The ports were free a moment ago; something that took one since is named."""
    taken = cluster.ports_in_use()
    if taken:
        missing(f"ports {taken} on 127.0.0.1 were taken between the free-port search and the start")
