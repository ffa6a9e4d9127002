"""A multi-node Ray cluster on this host, started with ``ray start`` (a head and worker nodes).

Used by the ``two_nodes`` fixture (tests/conftest.py) and ``benchmarks/cluster_tune.py``.

Each node runs ``ray start --block`` in its own session, so the node is one process group
(the ``ray start`` process, the GCS on the head, the raylet, the agents); the raylet puts each
worker process in a group of its own, so a node's processes are that group plus the raylet's
descendants, found through /proc. ``kill_node`` SIGKILLs all of them at once (a lost machine);
``stop`` sends SIGTERM to the group, then SIGKILL to whatever of them is left. Only processes
started here are signalled; never ``ray stop``, which stops every Ray on the machine.

Every port is explicit (GCS, client server, dashboard, dashboard agent listen/gRPC, metrics,
runtime-env agent, node manager, object manager, and a worker-port range per node), taken from
``base`` and ``worker_base`` upwards, so two clusters with distinct bases do not collide. Both
nodes report the same ``node:127.0.0.1`` resource, so each node also gets a custom resource
``mlops_node_<name>: 1``. Ray 2.60 turns token authentication on: the cluster gets a fresh token
of its own, passed to every node and driver as ``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``
(``env``), so ``~/.ray/auth_token`` (shared with other users of the machine) is neither read
nor written.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from tests.support.ci import missing
from tests.support.http_load import free_range

PORTS_PER_NODE = 10          # head: gcs, client, dashboard + the 7 below; workers use the last 7


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: str
    ports: dict
    killed: bool = False

    @property
    def pgid(self) -> int:
        return self.proc.pid          # start_new_session: the group id is the leader's pid

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class LocalCluster:
    """``LocalCluster(names=("head", "w1"), num_cpus=2, base=6700, worker_base=18700).start()``."""

    names: tuple[str, ...] = ("head", "w1")
    num_cpus: int = 2
    base: int = 6700                    # PORTS_PER_NODE ports per node from here
    worker_base: int = 18700            # worker_ports ports per node from here
    worker_ports: int = 25
    object_store_mb: int = 400
    root: str | None = None             # temp dirs and logs; default a short dir under /tmp (socket paths)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    nodes: dict[str, Node] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)     # node name -> Ray node id, once started
    start_s: dict[str, float] = field(default_factory=dict)   # seconds each node took to start (+ retries)
    node_env: dict[str, str] = field(default_factory=dict)    # extra environment of every node's processes

    # ------------------------------------------------------------------ public
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.base}"

    @property
    def env(self) -> dict[str, str]:
        """Environment of a node or a driver of this cluster."""
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                "RAY_USAGE_STATS_ENABLED": "0"}

    def _node_env(self) -> dict[str, str]:
        # the GCS declares a silent node dead after 3 missed 1 s health checks (default: 5 x 3 s,
        # after a 5 s delay), so a killed node's trials fail and are retried within seconds
        return {**self.env, "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3", **self.node_env}

    def ports_in_use(self) -> list[int]:
        """This cluster's fixed ports that something on 127.0.0.1 already listens on."""
        import socket
        taken = []
        for i in range(len(self.names)):
            for k, port in self._ports(i).items():
                if k in ("min-worker-port", "max-worker-port"):
                    continue
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        taken.append(port)
        return taken

    @staticmethod
    def resource(name: str) -> str:
        return f"mlops_node_{name}"

    def start(self, timeout_s: float = 120.0) -> "LocalCluster":
        self.root = self.root or tempfile.mkdtemp(prefix="mlops-nodes-", dir="/tmp")
        try:
            for i, name in enumerate(self.names):
                t = time.perf_counter()
                for attempt in range(3):
                    # `ray start` gives a raylet 30 s to register with the GCS; on a loaded 2-core
                    # machine a node can miss that: start it again
                    self._start_node(i, name)
                    try:
                        self._wait_started(self.nodes[name], timeout_s)
                        break
                    except _NodeExited:
                        self._stop_node(self.nodes[name])
                        if attempt == 2:
                            raise
                self.start_s[name] = round(time.perf_counter() - t, 1)
            self.ids = self.node_ids()
            if len(self.ids) != len(self.names):
                raise RuntimeError(f"the cluster has nodes {self.ids}; expected {list(self.names)}")
        except BaseException:
            self.stop()
            raise
        return self

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of a node at once: its group (raylet, agents) and the raylet's workers."""
        node = self.nodes[name]
        node.killed = True
        procs = _node_processes(node.pgid)
        _signal_group(node.pgid, signal.SIGKILL)
        table = _proc_table()
        for p in procs:
            _signal_exact(p, signal.SIGKILL, table)
        try:
            node.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def processes(self, name: str, title_prefix: str = "") -> list[int]:
        """Live processes of a node whose command line starts with ``title_prefix`` (Ray names a
        worker ``ray::<Actor>.<method>`` while it runs that method)."""
        return [p.pid for p in _node_processes(self.nodes[name].pgid) if p.title.startswith(title_prefix)]

    def stop(self) -> None:
        """Stop every node started here: workers first, then the head."""
        for name in reversed(list(self.nodes)):
            self._stop_node(self.nodes[name])
        if self.root and os.path.isdir(self.root):
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _stop_node(node: Node, grace_s: float = 10.0) -> None:
        """SIGTERM to the node's group (the raylet stops its workers), then SIGKILL to what is left."""
        procs = _node_processes(node.pgid)
        if procs:
            _signal_group(node.pgid, signal.SIGTERM)
            deadline = time.time() + grace_s
            while time.time() < deadline:
                node.proc.poll()
                table = _proc_table()
                if not any(_exists(p, table) for p in procs):
                    break
                time.sleep(0.3)
            _signal_group(node.pgid, signal.SIGKILL)
            table = _proc_table()
            for p in procs:
                _signal_exact(p, signal.SIGKILL, table)
        try:
            node.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def alive_nodes(self) -> list[dict]:
        """Ray's view of the cluster's nodes (a short driver in a subprocess: this process stays Ray-free)."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print('NODES=' + json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], "
                "'resources': n['Resources']} for n in ray.nodes()]))" % self.address)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=120)
        for line in r.stdout.splitlines():
            if line.startswith("NODES="):
                return [n for n in json.loads(line[6:]) if n["alive"]]
        raise RuntimeError(f"could not list the nodes of {self.address}: {r.stderr[-2000:]}")

    def node_ids(self) -> dict[str, str]:
        """Node name -> Ray node id, by each node's custom resource."""
        out = {}
        for n in self.alive_nodes():
            for name in self.names:
                if self.resource(name) in n["resources"]:
                    out[name] = n["id"]
        return out

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals
    def _ports(self, i: int) -> dict:
        p = self.base + i * PORTS_PER_NODE
        w = self.worker_base + i * self.worker_ports
        ports = {"dashboard-agent-listen-port": p + 3, "dashboard-agent-grpc-port": p + 4,
                 "metrics-export-port": p + 5, "runtime-env-agent-port": p + 6, "node-manager-port": p + 7,
                 "object-manager-port": p + 8, "min-worker-port": w, "max-worker-port": w + self.worker_ports - 1}
        if i == 0:
            ports.update({"port": p, "ray-client-server-port": p + 1, "dashboard-port": p + 2})
        return ports

    def _start_node(self, i: int, name: str) -> None:
        ports = self._ports(i)
        temp = os.path.join(self.root, name)
        os.makedirs(temp, exist_ok=True)
        cmd = [sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--block",
               "--node-ip-address=127.0.0.1", f"--num-cpus={self.num_cpus}", "--num-gpus=0",
               f"--resources={json.dumps({self.resource(name): 1})}", f"--temp-dir={temp}",
               f"--object-store-memory={self.object_store_mb * 1024 * 1024}", "--disable-usage-stats",
               "--include-log-monitor=false"]
        cmd += [f"--{k}={v}" for k, v in ports.items()]
        cmd += ["--head", "--include-dashboard=false"] if i == 0 else [f"--address={self.address}"]
        log = os.path.join(self.root, f"{name}.log")
        with open(log, "ab") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self._node_env(), start_new_session=True, cwd=self.root)
        self.nodes[name] = Node(name, proc, log, ports)

    @staticmethod
    def _wait_started(node: Node, timeout_s: float) -> None:
        """Until the node's ``ray start`` says it is up (its raylet registered with the GCS)."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if "Ray runtime started." in _tail(node.log, 100_000):
                return
            if not node.alive():
                raise _NodeExited(f"ray node {node.name!r} exited at start; see {node.log}:\n" + _tail(node.log))
            time.sleep(0.3)
        raise RuntimeError(f"ray node {node.name!r} did not start within {timeout_s:.0f} s; see {node.log}")


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass(frozen=True)
class _Proc:
    pid: int
    start: int          # start time (clock ticks since boot): a pid reused later is another process
    title: str


class _NodeExited(RuntimeError):
    pass


def _proc_table() -> dict[int, tuple[int, int, int, str]]:
    """pid -> (ppid, pgid, start time, command line) of live (not zombie) processes, from /proc.
    A killed node's children linger as zombies until init reaps them: no port, no CPU."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()     # state, ppid, pgrp, ...; starttime is 20th
            if fields[0] == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            out[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[19]), title)
        except (OSError, IndexError, ValueError):
            continue
    return out


def _node_processes(pgid: int) -> list[_Proc]:
    """A node's live processes: its group and every descendant of the group's members."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = [pid for pid, (_, pg, _, _) in table.items() if pg == pgid]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children.get(pid, [])
    return [_Proc(pid, table[pid][2], table[pid][3]) for pid in sorted(seen)]


def _exists(p: _Proc, table: dict | None = None) -> bool:
    entry = (table if table is not None else _proc_table()).get(p.pid)
    return entry is not None and entry[2] == p.start


def _signal_exact(p: _Proc, sig: int, table: dict | None = None) -> None:
    if _exists(p, table):
        try:
            os.kill(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------- ports for a test's cluster
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
