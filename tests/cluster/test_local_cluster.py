"""cluster/local-cluster.sh end to end: `up 1` starts a head and one worker on this host (token auth,
own ports, temp dir and CPUs), a driver in a subprocess sees 2 nodes told apart by their custom
resources and runs a task on each, `down` leaves no process behind. Self-contained: it does not use
the two_nodes fixture. Ports: a free block of 200 found when the test starts (100 for services,
then 50 worker ports per node)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.ci import missing
from tests.support.http_load import free_range

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cluster" / "local-cluster.sh"
WORKER_PORTS_PER_NODE = 50


def service_ports(base: int) -> list[int]:
    """What local-cluster.sh binds from BASE_PORT for a head and one worker (its svc_port layout)."""
    return [base + i for i in range(5)] + [base + 10 + 10 * n + s for n in (0, 1) for s in range(6)]

DRIVER = textwrap.dedent("""
    import json, sys
    import ray
    ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
    nodes = [n for n in ray.nodes() if n["Alive"]]

    @ray.remote(num_cpus=1)
    def where():
        return ray.get_runtime_context().get_node_id()

    placed = {r: ray.get(where.options(resources={r: 0.01}).remote()) for r in ("mlops_node_head", "mlops_node_w1")}
    print(json.dumps({"nodes": [{"id": n["NodeID"], "resources": n["Resources"]} for n in nodes], "placed": placed}))
    ray.shutdown()
""")


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def processes_naming(text: str) -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                out.append(f"{d.name} {cmd[:120]}")
    return out


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out


@pytest.fixture
def cluster_env():
    if shutil.which("setsid") is None:
        pytest.skip("setsid (util-linux) is not installed; local-cluster.sh needs it")
    try:
        base = free_range(100 + 2 * WORKER_PORTS_PER_NODE)
    except RuntimeError as e:
        missing(str(e))
    d = tempfile.mkdtemp(prefix="mlc-", dir="/tmp")          # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(CLUSTER_DIR=d, BASE_PORT=str(base), WORKER_PORT_BASE=str(base + 100),
               WORKER_PORTS_PER_NODE=str(WORKER_PORTS_PER_NODE), CPUS_PER_NODE="1", OBJECT_STORE_MB="200",
               DASHBOARD="0", UP_TIMEOUT="150", START_TRIES="3", RAY=str(Path(sys.executable).parent / "ray"))
    yield env
    subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, timeout=120)    # after a failure too
    shutil.rmtree(d, ignore_errors=True)


def run(env, *args, timeout=560) -> subprocess.CompletedProcess:
    # `up` waits up to UP_TIMEOUT per try and node: on an idle 2-core machine it takes 25-40 s; on one
    # shared with other test runs (load 10-30) a node can need minutes and a second try
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(900)
def test_up_two_nodes_run_a_task_on_each_then_down(cluster_env):
    env, d = cluster_env, cluster_env["CLUSTER_DIR"]
    base = int(env["BASE_PORT"])
    t0 = time.monotonic()
    up = run(env, "up", "1")
    t_up = time.monotonic() - t0
    failed_tries = up.stderr.count("exited while starting") + up.stderr.count("did not start")
    if up.returncode != 0 and 0 < failed_tries == up.stderr.count("gave up waiting for its dashboard agent"):
        # Ray 2.60's raylet gives its Python dashboard agent 15 s, a fixed limit; on a machine shared
        # with other runs every try can miss it. That says nothing about the script: skip, saying so
        # (in CI, whose machine is ours alone, it fails)
        missing(f"this machine is too busy for Ray to start a node (load average {os.getloadavg()[0]:.0f} "
                f"on {os.cpu_count()} cores; every try's raylet timed out waiting for its dashboard agent)")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"ray.address: 127.0.0.1:{base}" in up.stdout
    assert f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={d}/auth_token" in up.stdout
    token = Path(d, "auth_token")
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    assert token.read_text() not in up.stdout + up.stderr
    pids = {n: int(Path(d, "pids", f"{n}.pid").read_text()) for n in ("head", "w1")}
    for n, pid in pids.items():     # Serve's proxy balances over every node's replicas (docs/architecture.md, Serving)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING=0" in environ, n

    again = run(env, "up", "1")                          # idempotent: same nodes, nothing started
    assert again.returncode == 0 and {n: int(Path(d, "pids", f"{n}.pid").read_text()) for n in pids} == pids

    deadline = time.monotonic() + 45        # `ray status` is the autoscaler's view, refreshed every few s
    while True:
        status = run(env, "status", timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        if "mlops_node_w1" in status.stdout.split("ray status")[-1] or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert "  w1  pid " in status.stdout and "running" in status.stdout
    assert "0.0/1.0 mlops_node_w1" in status.stdout and "0.0/2.0 CPU" in status.stdout
    exports = run(env, "env", timeout=30).stdout
    assert f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token}" in exports and f"127.0.0.1:{base}" in exports

    # the driver runs in its own process, with this cluster's token; the test process's Ray is untouched
    driver_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    res = subprocess.run([sys.executable, "-c", DRIVER, f"127.0.0.1:{base}"], env=driver_env, cwd=d,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(out["nodes"]) == 2
    by_resource = {r: n["id"] for n in out["nodes"] for r in n["resources"] if r.startswith("mlops_node_")}
    assert set(by_resource) == {"mlops_node_head", "mlops_node_w1"}
    assert out["placed"] == by_resource and len(set(out["placed"].values())) == 2

    t0 = time.monotonic()
    down = run(env, "down", timeout=120)
    t_down = time.monotonic() - t0
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_naming(d + "/") == []
    assert {n: group_members(p) for n, p in pids.items()} == {"head": [], "w1": []}
    assert [p for p in service_ports(base) if listening(p)] == []
    gone = run(env, "status", timeout=30)
    assert gone.returncode == 1 and "the head is not running" in gone.stderr
    retries = up.stderr.count("trying again")
    print(f"local-cluster.sh up 1: {t_up:.1f} s ({retries} retried node starts), down: {t_down:.1f} s")


def test_bad_input_is_refused_with_the_fix(cluster_env):
    env = cluster_env
    base = int(env["BASE_PORT"])
    res = run(env, "up", "x")
    assert res.returncode == 2 and "usage:" in res.stderr and "got 'x'" in res.stderr
    res = run({**env, "CLUSTER_DIR": "/tmp/" + "d" * 60}, "up", "1")
    assert res.returncode == 2 and "use at most 40" in res.stderr
    res = run({**env, "WORKER_PORT_BASE": str(base + 20)}, "up", "1")
    assert res.returncode == 2 and "overlap the service ports" in res.stderr
    with socket.socket() as s:                           # a port of the block already taken
        s.bind(("127.0.0.1", base))
        s.listen()
        res = run(env, "up", "1")
    assert res.returncode == 2 and f"port {base} (127.0.0.1) is already in use" in res.stderr
    assert run(env, "down").returncode == 0
