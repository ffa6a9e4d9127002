"""`mlops-ray submit` against a real single-node Ray head with its dashboard (Jobs API).

One head for the module (``submit_head``): ``ray start --head --block`` in its own session with
every port explicit (a free block found at the start: 9 services, 50 workers), its own ``--temp-dir`` and its
own token (``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``, so ``~/.ray/auth_token`` is neither read
nor written). It is stopped by killing exactly its processes: the ``ray start`` process group,
then every process that descended from it or runs from its temp dir (Ray puts workers and job
drivers in process groups of their own). Never ``ray stop``: it stops every Ray on the machine.

The jobs run the CLI from a small project in a temp dir (pyproject.toml, a copy of mlops_ray/, the
config under configs/): that project root is the job's working_dir. Data and store are absolute
paths outside it, on this host, so the job and the test read the same files.
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
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.ci import missing
from tests.support.http_load import free_range

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("port", "ray-client-server-port", "object-manager-port", "node-manager-port", "dashboard-port",
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
            "metrics-export-port")


def free_ports() -> dict:
    """Every port of the head, from one free block (9 services, then 50 worker ports)."""
    try:
        base = free_range(len(SERVICES) + 50)
    except RuntimeError as e:
        missing(str(e))
    ports = {name: base + i for i, name in enumerate(SERVICES)}
    return {**ports, "min-worker-port": base + len(SERVICES), "max-worker-port": base + len(SERVICES) + 49}


# --------------------------------------------------------------------------- a head with a dashboard
class Head:
    """A single-node Ray head with the dashboard; ``start()`` waits until the Jobs API answers."""

    def __init__(self, ports: dict | None = None, num_cpus: int = 4):
        self.ports = ports or free_ports()
        self.num_cpus = num_cpus
        self.token = secrets.token_hex(16)
        self.temp = tempfile.mkdtemp(prefix="mr-submit-", dir="/tmp")    # short: Ray's socket paths
        self.log = os.path.join(self.temp, "head-1.log")
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    @property
    def env(self) -> dict:
        """Environment of the head and of clients that should pass its token. The venv's bin comes
        first on PATH: a job's entrypoint runs `python` from the head's PATH."""
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        return {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self, timeout_s: float = 120.0, attempts: int = 2) -> "Head":
        """Start the head; on a loaded machine Ray's fixed 30 s wait for the raylet to register can
        run out ("timed out during startup"), so that one failure is retried once."""
        for attempt in range(1, attempts + 1):
            self._launch(attempt)
            deadline = time.time() + timeout_s
            while True:
                if self.proc.poll() is not None:
                    log = self._tail()
                    if attempt < attempts and "timed out during startup" in log:
                        self.stop(remove=False)
                        break
                    raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{log}")
                # the dashboard answers before `ray start` is done (its node can still time out and
                # exit): ready is both the Jobs API and the "block forever" line of a finished start
                if "will now block forever" in self._tail(100_000) and self._jobs_api_up():
                    return self
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"the Jobs API did not answer in {timeout_s:.0f} s:\n{self._tail()}")
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def _launch(self, attempt: int) -> None:
        self.log = os.path.join(self.temp, f"head-{attempt}.log")     # one per attempt
        cmd = [sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
               f"--num-cpus={self.num_cpus}", "--num-gpus=0", f"--temp-dir={self.temp}", "--disable-usage-stats",
               "--object-store-memory=300000000"]
        cmd += [f"--{k}={v}" for k, v in self.ports.items()]
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, start_new_session=True, cwd=self.temp)

    def _jobs_api_up(self) -> bool:
        req = urllib.request.Request(f"{self.address}/api/jobs/", headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _tail(self, n: int = 3000) -> str:
        try:
            return Path(self.log).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _ours(self) -> dict[int, str]:
        """pid -> cmdline of every live process that descends from the head or runs from its temp dir."""
        procs = {}
        for e in os.listdir("/proc"):
            if not e.isdigit():
                continue
            try:
                with open(f"/proc/{e}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{e}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                cwd = os.readlink(f"/proc/{e}/cwd") if fields[0] != "Z" else ""
            except OSError:
                continue
            if fields[0] != "Z":
                procs[int(e)] = (int(fields[1]), cmd, cwd)
        ours, todo = set(), [self.proc.pid] if self.proc else []
        while todo:
            pid = todo.pop()
            if pid in procs and pid not in ours:
                ours.add(pid)
                todo += [p for p, (ppid, _, _) in procs.items() if ppid == pid]
        ours |= {p for p, (_, cmd, cwd) in procs.items() if self.temp in cmd or cwd.startswith(self.temp)}
        ours.discard(os.getpid())
        return {p: procs[p][1] for p in ours}

    def stop(self, remove: bool = True) -> None:
        if self.proc is None:
            return
        before = self._ours()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:                            # `ray start --block` takes more than 20 s to finish on SIGTERM
            self.proc.wait(8)
        except subprocess.TimeoutExpired:
            pass
        left = self._ours()
        for pid, cmd in {**before, **left}.items():
            if left.get(pid) == cmd:           # the same process (not a reused pid), still alive
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        if remove:
            shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def submit_head():
    head = Head().start()
    try:
        yield head
    finally:
        head.stop()


# --------------------------------------------------------------------------- a small project
def make_project(base: Path, rows: int = 10_000) -> dict:
    """A project root (pyproject.toml, mlops_ray/, configs/tiny.yaml) and data + store outside it."""
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    from tests.support.configs import write_parquet

    project = base / "project"
    (project / "configs").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    shutil.copytree(ROOT / "mlops_ray", project / "mlops_ray", ignore=shutil.ignore_patterns("__pycache__"))
    data = write_parquet(generate_chunk(SynthSpec(rows=rows, seed=5), 0, rows), base / "data")
    store = base / "store"
    raw = {"name": "submit-test", "store": str(store),
           "data": {"source": str(data), "label": "is_fraud", "id_column": "transaction_id",
                    "time_column": "event_time"},
           "model": {"num_boost_round": 30},
           "tune": {"num_samples": 2, "report_every": 10}}
    (project / "configs" / "tiny.yaml").write_text(yaml.safe_dump(raw))
    return {"project": project, "config": "configs/tiny.yaml", "store": store, "data": data}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("submit"))


def submit(project, head_address, *args, env, timeout=600):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mlops_ray", "submit", project["config"], "--address", head_address,
                        *args], cwd=project["project"], env=env, capture_output=True, text=True, timeout=timeout)
    r.seconds = time.perf_counter() - t
    return r


# --------------------------------------------------------------------------- tests
def test_run_succeeds_on_the_cluster_and_registers(submit_head, project):
    r = submit(project, submit_head.address, "--wait", "--json", "--", "run", env=submit_head.env)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["status"] == "SUCCEEDED"
    assert "registered version 1: champion" in r.stderr          # the job's own output, streamed
    assert submit_head.token not in r.stdout + r.stderr
    # the command connected to the cluster it ran on (no embedded Ray inside the job)
    from ray.job_submission import JobSubmissionClient
    client = JobSubmissionClient(submit_head.address, headers={"Authorization": f"Bearer {submit_head.token}"})
    info = client.get_job_info(res["job_id"])
    assert info.driver_info is not None and info.job_id     # a driver registered with this cluster's GCS
    # the job wrote to the store this host reads: version 1 is the champion
    from mlops_ray.config import load_config
    from mlops_ray.registry import Registry
    cfg = load_config(project["project"] / project["config"])
    reg = Registry(cfg.registry, cfg.store, cfg.name)
    assert reg.get_alias("champion") == "1"


def test_without_wait_prints_the_job_and_how_to_follow_it(submit_head, project):
    r = submit(project, submit_head.address, "--", "config", "check", env=submit_head.env)
    assert r.returncode == 0, r.stderr
    assert "submitted job raysubmit_" in r.stdout
    assert f"dashboard: {submit_head.address}/#/jobs/raysubmit_" in r.stdout
    assert "RAY_AUTH_MODE=token ray job logs -f raysubmit_" in r.stdout and f"--address {submit_head.address}" in r.stdout


def test_failing_entrypoint_exit_11_with_its_last_log_lines(submit_head, project):
    r = submit(project, submit_head.address, "--wait", "--", "validate", "--set", "data.source=/nonexistent/data",
               env=submit_head.env)
    assert r.returncode == 11, r.stdout + r.stderr
    assert "Job failed:" in r.stderr and "FAILED with exit code 3" in r.stderr
    assert "last log lines:" in r.stderr and "/nonexistent/data" in r.stderr.split("last log lines:")[1]


def test_wrong_token_is_refused_with_how_to_pass_it(submit_head, project):
    env = {**submit_head.env, "RAY_AUTH_TOKEN": "not-the-token"}
    r = submit(project, submit_head.address, "--wait", "--", "run", env=env)
    assert r.returncode == 7, r.stderr
    assert f"the Ray cluster at {submit_head.address} rejected the token from RAY_AUTH_TOKEN" in r.stderr
    assert "~/.ray/auth_token" in r.stderr and "RAY_AUTH_MODE=token" in r.stderr
    assert "not-the-token" not in r.stdout + r.stderr


def test_missing_token_is_refused_with_how_to_pass_it(submit_head, project, tmp_path):
    env = {k: v for k, v in submit_head.env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                                                                   "RAY_AUTH_MODE")}
    env["HOME"] = str(tmp_path)                     # no ~/.ray/auth_token
    r = submit(project, submit_head.address, "--", "run", env=env)
    assert r.returncode == 7, r.stderr
    assert "requires a token (token authentication is on) and none was sent" in r.stderr
    assert "RAY_AUTH_TOKEN" in r.stderr and "~/.ray/auth_token" in r.stderr
