"""`mlops-ray submit` without a cluster: what is uploaded, its size, the entrypoint, the token,
and each bad input (unreachable address, not a dashboard, no/wrong token, too big, a failed job)
with its message and exit code. Fake dashboards are tiny http.servers on 127.0.0.1:8690-8694."""
from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from mlops_ray.cluster import jobs
from mlops_ray.cli import app
from mlops_ray.errors import ConfigError, ExitCode, JobFailed, ResourceError
from tests.support.configs import base_raw, make_config

pytestmark = pytest.mark.unit

runner = CliRunner()
TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch, tmp_path):
    """Each test decides which token exists: none from this machine's env or ~/.ray."""
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS",
              "RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_RUNTIME_ENV_IGNORE_GITIGNORE",
              "RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES"):
        monkeypatch.delenv(k, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def make_project(root: Path, **sections) -> Path:
    """A project root: pyproject.toml, mlops_ray/__init__.py, configs/c.yaml; returns the root."""
    (root / "configs").mkdir(parents=True)
    (root / "mlops_ray").mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "mlops_ray" / "__init__.py").write_text("")
    raw = base_raw(sections.pop("source", "/abs/data"), **sections)
    (root / "configs" / "c.yaml").write_text(yaml.safe_dump(raw))
    return root


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def submit_cli(*args):
    return runner.invoke(app, ["submit", "configs/c.yaml", *args])


# --------------------------------------------------------------------------- what is uploaded
def test_upload_files_follow_rays_own_traversal(tmp_path):
    """Same files as Ray 2.60's packaging._dir_travel with its default excludes: nested .gitignore
    (relative to its directory), .rayignore, excludes anchored at the root, empty directories."""
    from ray._private.runtime_env import packaging

    root = tmp_path / "p"
    for name in ("a.py", "pkg/b.py", "pkg/deep/c.txt", "pkg/deep/skip.log", "logs/x.log", "big/data.bin",
                 ".git/HEAD", ".venv/bin/python", "pkg/__pycache__/b.pyc", "keep.log", "sub/.mlops-demo/s.json",
                 "benchmarks/results/r.json", "benchmarks/x.py"):
        write(root / name, 10)
    (root / "empty").mkdir()
    (root / ".gitignore").write_text("/logs/\n*.tmp\n")
    (root / "pkg" / ".gitignore").write_text("deep/*.log\n")
    (root / ".rayignore").write_text("big/\n")
    excludes = [".mlops*", "/benchmarks/results/"]

    ours = {name for name, _ in jobs.upload_files(root, excludes)}
    theirs = set()

    def handler(p: Path):
        if p.is_file() or (p.is_dir() and next(p.iterdir(), None) is None):
            theirs.add(p.relative_to(root).as_posix() + ("/" if p.is_dir() else ""))
    defaults = packaging_defaults()
    packaging._dir_travel(root, [packaging._get_excludes(root, defaults + excludes)], handler, include_gitignore=True)
    assert ours == theirs
    assert ours == {"a.py", "pkg/b.py", "pkg/deep/c.txt", "keep.log", "benchmarks/x.py", "empty/", ".gitignore",
                    "pkg/.gitignore", ".rayignore"}


def packaging_defaults():
    from ray._private import ray_constants
    return ray_constants.get_runtime_env_default_excludes()


def test_gitignore_can_be_turned_off_like_ray(tmp_path, monkeypatch):
    root = tmp_path / "p"
    write(root / "logs" / "x.log", 5)
    (root / ".gitignore").write_text("logs/\n")
    assert "logs/x.log" not in {n for n, _ in jobs.upload_files(root, [])}
    monkeypatch.setenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")
    assert "logs/x.log" in {n for n, _ in jobs.upload_files(root, [])}


def test_local_store_and_data_inside_the_project_are_left_out(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", source="data/d.parquet")
    monkeypatch.chdir(root)
    cfg = make_config("data/d.parquet", store=str(root / "runs"))
    assert jobs.local_excludes(cfg, root) == ["/runs/", "/data/d.parquet"]
    outside = make_config(str(tmp_path / "elsewhere"), store="s3://bucket/x")
    assert jobs.local_excludes(outside, root) == []
    write(root / "runs" / "model.ubj", 1000)
    write(root / "data" / "d.parquet", 1000)
    files = {n for n, _ in jobs.upload_files(root, jobs.PROJECT_EXCLUDES + jobs.local_excludes(cfg, root))}
    assert files == {"pyproject.toml", "mlops_ray/__init__.py", "configs/c.yaml"}


def test_zip_size_is_the_bytes_plus_zip_headers():
    files = [("a.py", 1000), ("pkg/b.py", 24)]
    assert jobs.zip_bytes(files) == 1000 + 24 + 2 * 76 + 2 * (4 + 8) + 22


def test_over_the_limit_names_the_biggest_and_the_fix(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p")
    write(root / "weights" / "huge.bin", 300_000)
    write(root / "weights" / "small.bin", 1000)
    write(root / "notes.pdf", 120_000)
    monkeypatch.chdir(root)
    r = submit_cli("--max-upload-mib", "0.2", "--address", "http://127.0.0.1:8691", "--", "run")
    assert r.exit_code == ExitCode.CONFIG, r.output
    msg = " ".join(r.stderr.split())
    assert "would upload 0.4 MiB (6 files), over Ray's 0.2 MiB limit" in msg
    assert "biggest: weights/ 0.3 MiB, weights/huge.bin 0.3 MiB, notes.pdf 0.1 MiB" in msg
    assert f"{root / '.rayignore'}" in msg and "--exclude '/weights/'" in msg
    # the fix it names works: the size check passes (then the address is unreachable: exit 7)
    (root / ".rayignore").write_text("weights/\n")
    r = submit_cli("--max-upload-mib", "0.2", "--exclude", "notes.pdf", "--address", "http://127.0.0.1:8691",
                   "--", "run")
    assert r.exit_code == ExitCode.RESOURCES and "cannot reach the Ray dashboard" in r.stderr


def test_a_config_outside_the_project_is_refused(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p")
    other = make_project(tmp_path / "other")
    monkeypatch.chdir(root)
    r = runner.invoke(app, ["submit", str(other / "configs" / "c.yaml"), "--", "run"])
    assert r.exit_code == ExitCode.CONFIG
    msg = " ".join(r.stderr.split())
    assert f"is outside the project {root}" in msg and "move the config under" in msg


def test_a_config_the_upload_leaves_out_is_refused(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p")
    (root / ".gitignore").write_text("configs/\n")
    monkeypatch.chdir(root)
    r = submit_cli("--", "run")
    assert r.exit_code == ExitCode.CONFIG and "configs/c.yaml would not be uploaded" in " ".join(r.stderr.split())


def test_no_project_root(tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(base_raw("/abs/data")))
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["submit", "c.yaml", "--", "run"])
    assert r.exit_code == ExitCode.CONFIG and "no pyproject.toml in" in " ".join(r.stderr.split())


def test_runtime_env_keeps_the_configs_and_refuses_its_working_dir(tmp_path):
    root = make_project(tmp_path / "p")
    cfg = make_config("/abs", ray={"runtime_env": {"pip": ["polars"], "env_vars": {"A": "1"}, "excludes": ["*.bak"]}})
    env = jobs.runtime_env(cfg, root, ["/data/"])
    assert env == {"pip": ["polars"], "env_vars": {"A": "1"}, "excludes": ["*.bak", "/data/"], "working_dir": str(root)}
    (root / "mlops_ray" / "__init__.py").unlink()      # a project that uses an installed mlops-ray
    assert jobs.runtime_env(cfg, root, [])["py_modules"][0].endswith("mlops_ray")
    with pytest.raises(ConfigError, match="ray.runtime_env.working_dir is '/x'"):
        jobs.runtime_env(make_config("/abs", ray={"runtime_env": {"working_dir": "/x"}}), root, [])


# --------------------------------------------------------------------------- the entrypoint
@pytest.mark.parametrize("args,words,rest", [
    (["run", "--force"], ["run"], ["--force"]),
    (["serve", "stop", "--json"], ["serve", "stop"], ["--json"]),
    (["rollout", "promote"], ["rollout", "promote"], []),
    (["rollout", "--version", "3"], ["rollout"], ["--version", "3"]),
    (["config", "check"], ["config", "check"], []),
])
def test_split_command(args, words, rest):
    assert jobs.split_command(args) == (words, rest)


@pytest.mark.parametrize("args,match", [
    ([], "give the command to run after --"),
    (["--json"], "give the command to run after --"),
    (["submit"], "would submit from inside a job"),
    (["data", "synth", "--rows", "10"], "`mlops-ray data synth` takes no pipeline config"),
    (["config", "schema"], "`mlops-ray config schema` takes no pipeline config"),
    (["cluster", "check", "k8s.yaml"], "`mlops-ray cluster check` takes no pipeline config"),
])
def test_split_command_refuses(args, match):
    with pytest.raises(ConfigError, match=match):
        jobs.split_command(args)


def test_entrypoint_uses_the_clusters_python_and_quotes():
    e = jobs.entrypoint(["predict"], "configs/my cfg.yaml", ["--data", "/d"], ["store=/abs/s"], verbose=True)
    assert e == "python -m mlops_ray.cli --verbose predict 'configs/my cfg.yaml' --data /d --set store=/abs/s"


def test_plan_pins_paths_and_points_the_job_at_its_cluster(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", source="data/d")
    monkeypatch.chdir(root)
    from mlops_ray.config import load_config
    cfg = load_config("configs/c.yaml", {"ray.address": "ray://laptop-tunnel:10001"})
    p = jobs.plan(cfg, "configs/c.yaml", ["run", "--set", "tune.num_samples=2"])
    assert p.entrypoint == (f"python -m mlops_ray.cli run configs/c.yaml --set tune.num_samples=2 --set "
                            f"store={root / '.mlops'} --set data.source={root / 'data/d'} --set ray.address=auto")
    assert p.runtime_env["working_dir"] == str(root) and "/.mlops/" in p.runtime_env["excludes"]
    assert jobs.set_args(["run", "--set", "a=1", "--set=b=2", "--json"]) == ["a=1", "b=2"]


def test_job_address_only_inside_a_ray_job(monkeypatch):
    from mlops_ray.runtime import job_address
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")      # exported for `ray job submit`
    assert job_address() is None
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {}}')
    assert job_address() == "127.0.0.1:6379"


@pytest.mark.parametrize("given,expected", [("127.0.0.1:8265", "http://127.0.0.1:8265"),
                                            ("https://ray.example/", "https://ray.example")])
def test_normalize_address(given, expected):
    assert jobs.normalize_address(given) == expected


def test_a_ray_client_address_is_refused():
    with pytest.raises(ConfigError, match="is a Ray Client address; jobs are submitted to the dashboard"):
        jobs.normalize_address("ray://head:10001")


# --------------------------------------------------------------------------- the token
def test_token_sources_in_rays_order(monkeypatch, tmp_path, no_ambient_token):
    from mlops_ray.runtime import read_auth_token
    assert read_auth_token() is None
    (no_ambient_token / ".ray").mkdir()
    (no_ambient_token / ".ray" / "auth_token").write_text("from-home\n")
    assert read_auth_token() == ("from-home", "~/.ray/auth_token")
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert read_auth_token() == ("from-path", f"RAY_AUTH_TOKEN_PATH={tmp_path / 'tok'}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert read_auth_token() == ("from-env", "RAY_AUTH_TOKEN")
    assert jobs.auth_headers() == ({"Authorization": "Bearer from-env"}, "RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_headers() == ({}, None)


def test_an_unreadable_token_path_is_an_error_not_a_fallback(monkeypatch, tmp_path):
    from mlops_ray.runtime import read_auth_token
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(ResourceError, match="cannot read the Ray auth token from RAY_AUTH_TOKEN_PATH="):
        read_auth_token()


# --------------------------------------------------------------------------- fake dashboards
class FakeDashboard:
    """A tiny http.server on 127.0.0.1: ``routes`` maps a path to (status, body); records headers."""

    def __init__(self, port: int, routes: dict):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append((self.path, dict(self.headers)))
                status, body = routes.get(self.path, (404, "404: Not Found"))
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dashboard():
    servers = []

    def start(port, routes):
        servers.append(FakeDashboard(port, routes))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def probe_timeouts(monkeypatch):
    """The timeouts the dashboard probe passed to urlopen: failing fast is a bounded timeout on
    every request made, not a wall-clock measurement."""
    seen, real = [], jobs.urllib.request.urlopen

    def urlopen(req, timeout=None, **kw):
        seen.append(timeout)
        return real(req, timeout=timeout, **kw)
    monkeypatch.setattr(jobs.urllib.request, "urlopen", urlopen)
    return seen


def test_unreachable_address_fails_fast_and_says_how_to_start_a_cluster(project, probe_timeouts):
    r = submit_cli("--address", "http://127.0.0.1:8691", "--wait", "--", "run")
    assert probe_timeouts == [jobs.PROBE_TIMEOUT_S]         # one bounded probe, no client started
    assert r.exit_code == ExitCode.RESOURCES
    msg = " ".join(r.stderr.split())
    assert "Cannot submit the job: cannot reach the Ray dashboard at http://127.0.0.1:8691" in msg
    assert "ray start --head" in msg and "cluster/local-cluster.sh up" in msg


def test_an_address_that_accepts_but_never_answers_times_out_fast(project, probe_timeouts):
    with socket.socket() as s:            # listens, never accepts: the request hangs until the probe's timeout
        s.bind(("127.0.0.1", 8693))
        s.listen(1)
        r = submit_cli("--address", "127.0.0.1:8693", "--", "run")
    assert probe_timeouts == [jobs.PROBE_TIMEOUT_S]
    assert r.exit_code == ExitCode.RESOURCES
    assert "cannot reach the Ray dashboard at http://127.0.0.1:8693 (timed out)" in " ".join(r.stderr.split())


def test_a_server_that_is_not_a_ray_dashboard(project, dashboard):
    dashboard(8690, {"/": (200, "<html>hello</html>")})
    r = submit_cli("--address", "http://127.0.0.1:8690", "--", "run")
    assert r.exit_code == ExitCode.RESOURCES
    msg = " ".join(r.stderr.split())
    assert "http://127.0.0.1:8690 answered GET /api/version with HTTP 404: it is not a Ray dashboard" in msg
    assert "port 8265 by default" in msg


def test_a_server_that_answers_without_a_ray_version(project, dashboard):
    dashboard(8690, {"/api/version": (200, "<html>a login page</html>")})
    r = submit_cli("--address", "http://127.0.0.1:8690", "--", "run")
    assert r.exit_code == ExitCode.RESOURCES and "without a Ray version: it is not a Ray dashboard" in \
        " ".join(r.stderr.split())


def test_missing_token_401(project, dashboard):
    dash = dashboard(8690, {"/api/version": (401, "Unauthorized: Missing authentication token")})
    r = submit_cli("--address", "http://127.0.0.1:8690", "--", "run")
    assert r.exit_code == ExitCode.RESOURCES
    msg = " ".join(r.stderr.split())
    assert "requires a token (token authentication is on) and none was sent" in msg
    assert "RAY_AUTH_TOKEN" in msg and "~/.ray/auth_token" in msg and "RAY_AUTH_MODE=token" in msg
    assert "authorization" not in {k.lower() for k in dash.seen[0][1]}


def test_wrong_token_403_sends_the_header_and_never_prints_the_token(project, dashboard, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)     # RAY_AUTH_MODE unset: the header is sent anyway
    dash = dashboard(8690, {"/api/version": (403, "Forbidden: Invalid authentication token")})
    r = submit_cli("--address", "http://127.0.0.1:8690", "--json", "--", "run")
    assert r.exit_code == ExitCode.RESOURCES
    assert dash.seen[0][1].get("Authorization") == f"Bearer {TOKEN}"
    err = json.loads(r.stdout)
    assert err["error"] == "JobSubmitError"
    assert "rejected the token from RAY_AUTH_TOKEN (HTTP 403)" in err["message"]
    assert TOKEN not in r.stdout + r.stderr


# --------------------------------------------------------------------------- the job's outcome
class FakeClient:
    """The JobSubmissionClient calls ``submit`` makes, with a scripted job."""

    def __init__(self, status="SUCCEEDED", logs="line\n", code=0, message=""):
        self.status, self.logs, self.code, self.message = status, logs, code, message
        self.submitted = {}

    def submit_job(self, **kw):
        self.submitted = kw
        return "raysubmit_abc"

    async def tail_job_logs(self, job_id):
        for i in range(0, len(self.logs), 40):
            yield self.logs[i:i + 40]

    def get_job_status(self, job_id):
        return self.status

    def get_job_info(self, job_id):
        return SimpleNamespace(message=self.message, driver_exit_code=self.code)

    def get_job_logs(self, job_id):
        return self.logs


@pytest.fixture
def ray_dashboard(dashboard):
    return dashboard(8692, {"/api/version": (200, {"ray_version": "2.60.0", "version": "4"})})


def run_fake(project, client, **kw):
    from mlops_ray.config import load_config
    cfg = load_config("configs/c.yaml")
    chunks = []
    res = jobs.submit(cfg, "configs/c.yaml", ["run"], address="http://127.0.0.1:8692", wait=True,
                      on_log=chunks.append, client_factory=lambda a, h, v=False: client, poll_s=0.01, **kw)
    return res, "".join(chunks)


def test_succeeded_streams_the_logs_and_returns_the_timings(project, ray_dashboard):
    client = FakeClient(logs="".join(f"step {i}\n" for i in range(30)))
    res, streamed = run_fake(project, client)
    assert streamed == client.logs
    assert res["status"] == "SUCCEEDED" and res["job_id"] == "raysubmit_abc" and res["ray_version"] == "2.60.0"
    assert set(res["seconds"]) == {"submitted", "first_log", "done"}
    assert client.submitted["entrypoint"].startswith("python -m mlops_ray.cli run configs/c.yaml")
    assert client.submitted["runtime_env"]["working_dir"] == str(project)
    assert res["follow"][0] == "ray job logs -f raysubmit_abc --address http://127.0.0.1:8692"


def test_failed_job_is_exit_11_with_its_last_20_lines(project, ray_dashboard):
    logs = "".join(f"step {i}\n" for i in range(40)) + "Model rejected by the gate: auc 0.49 < 0.5\n"
    client = FakeClient("FAILED", logs, code=4, message="Job entrypoint command failed with exit code 4, last "
                                                        "available logs (truncated to 20,000 chars):\n" + logs)
    with pytest.raises(JobFailed) as e:
        run_fake(project, client)
    assert e.value.exit_code == ExitCode.JOB == 11
    msg = e.value.message
    assert msg.startswith("job raysubmit_abc FAILED with exit code 4: Job entrypoint command failed with exit code 4\n")
    lines = msg.split("last log lines:\n")[1].splitlines()
    assert len(lines) == 20 and lines[-1].strip() == "Model rejected by the gate: auc 0.49 < 0.5"
    assert lines[0].strip() == "step 21"


def test_stopped_job_has_its_own_message(project, ray_dashboard):
    with pytest.raises(JobFailed, match="job raysubmit_abc was stopped before it finished"):
        run_fake(project, FakeClient("STOPPED", "started\n", code=None, message="Job was intentionally stopped."))


def test_the_cli_maps_a_failed_job_to_exit_11_and_shows_brackets_in_logs(project, ray_dashboard, monkeypatch):
    client = FakeClient("FAILED", "[/tmp/x] not [bold]markup\n", code=3, message="failed")
    monkeypatch.setattr(jobs, "_client", lambda a, h, v=False: client)
    r = submit_cli("--address", "http://127.0.0.1:8692", "--wait", "--", "validate")
    assert r.exit_code == 11, r.output
    assert "submitted job raysubmit_abc" in r.stderr
    assert "Job failed: job raysubmit_abc FAILED with exit code 3: failed" in r.stderr
    assert "[/tmp/x] not [bold]markup" in r.stderr         # log lines are printed as they are
    assert r.stdout == client.logs                          # the streamed logs go to stdout


def test_without_wait_prints_the_id_dashboard_and_follow_commands(project, ray_dashboard, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    monkeypatch.setattr(jobs, "_client", lambda a, h, v=False: FakeClient())
    r = submit_cli("--address", "http://127.0.0.1:8692", "--", "run")
    assert r.exit_code == 0, r.output
    assert "submitted job raysubmit_abc" in r.stdout
    assert "dashboard: http://127.0.0.1:8692/#/jobs/raysubmit_abc" in r.stdout
    assert "RAY_AUTH_MODE=token ray job logs -f raysubmit_abc --address http://127.0.0.1:8692" in r.stdout
    assert TOKEN not in r.stdout + r.stderr
