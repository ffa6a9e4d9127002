"""`mlops-ray submit`: run an mlops-ray command on a Ray cluster through the Jobs API.

In: a loaded ``Config``, the path of its file, the command to run (``run``, ``predict --data ...``)
and the address of the cluster's dashboard. Out: a dict (job id, dashboard URL, the commands to
follow the job, what was uploaded, the job's final status with ``wait``).

The job's ``working_dir`` is the project root (the directory holding pyproject.toml), so the
cluster imports the same ``mlops_ray/`` and reads the config at the same relative path; its
entrypoint is ``python -m mlops_ray.cli COMMAND CONFIG ARGS`` with the cluster's python. What is
left out of the upload follows Ray's own rules (``.gitignore`` and ``.rayignore`` in each directory,
Ray's default excludes, the ``excludes`` list), plus the local store, local data, ``.mlops*`` and
benchmark outputs; the size is checked here, before anything is sent, against the dashboard's
100 MiB limit. Inside the job, ``runtime.ray_runtime`` connects to the cluster it runs on.

Pure helpers first (project, upload, entrypoint, token headers, errors); ``submit`` at the bottom.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from mlops_ray.errors import ConfigError, JobFailed, JobSubmitError
from mlops_ray.runtime import read_auth_token
# Imported where used, for their import cost (python -X importtime): ray 0.7 s.

UPLOAD_LIMIT = 100 * 1024 ** 2         # the dashboard's request size limit (ray_constants.DASHBOARD_CLIENT_MAX_SIZE)
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
PROBE_TIMEOUT_S = 3.0
LAST_LINES = 20
# Ray's own default excludes (RAY_RUNTIME_ENV_DEFAULT_EXCLUDES), overridable as in Ray
RAY_DEFAULT_EXCLUDES = ".git,.venv,venv,__pycache__"
# left out of every upload: Ray's defaults (again, in case they are overridden), the project's
# stores and demo stores, benchmark inputs and outputs, build and test caches
PROJECT_EXCLUDES = [".git", ".venv", "venv", "__pycache__", ".mlops*", "/benchmarks/results/",
                    "/benchmarks/.data/", ".pytest_cache/", "*.egg-info/", "/build/", "/mlruns/"]
# commands whose first word is a group: the config comes after two words
GROUPS = {"serve": ("stop", "build"), "config": ("check",), "rollout": ("promote", "rollback")}
NO_CONFIG = {"data", "cluster", ("config", "schema")}   # commands that take no pipeline config
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


# --------------------------------------------------------------------------- project
def find_project_root(start: str | os.PathLike) -> Path:
    """The nearest directory at or above ``start`` that holds pyproject.toml."""
    here = Path(start).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file():
            return d
    raise ConfigError(f"no pyproject.toml in {here} or above it: `mlops-ray submit` uploads the project root "
                      "(the directory holding pyproject.toml) as the job's working_dir; run it from inside "
                      "the project, or pass --project-dir")


def relative_to_root(path: str | os.PathLike, root: Path) -> str | None:
    """``path`` relative to ``root`` (POSIX), or None when it is outside."""
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def config_in_project(config_path: str, root: Path) -> str:
    rel = relative_to_root(config_path, root)
    if rel is None:
        raise ConfigError(f"config {config_path!r} is outside the project {root}: the job runs in a copy of the "
                          "project root and reads the config from there; move the config under "
                          f"{root} (e.g. configs/) or run from the project that holds it (--project-dir)")
    return rel


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else os.path.expanduser(uri)


def local_excludes(cfg, root: Path) -> list[str]:
    """Upload patterns (anchored at the root) for the config's store and data sources that are
    local paths inside the project: the job reads them where they are, not from the upload."""
    out = []
    for uri, is_dir in [(cfg.store, True)] + [(s, False) for s in cfg.data.sources]:
        if not is_local(uri):
            continue
        rel = relative_to_root(_local_path(uri), root)
        if rel and rel != ".":
            out.append(f"/{rel}/" if is_dir else f"/{rel}")
    return out


def absolute_overrides(cfg, cwd: str | os.PathLike) -> list[str]:
    """``--set`` values that pin local paths to this machine's absolute paths: the job's cwd is a
    copy of the project without the store and the data, so a relative path (or a store made
    absolute when the job loads the config) would point into that copy. The store is always
    passed; a data source only when it is relative."""
    out = []
    if "://" not in cfg.store:
        out.append(f"store={os.path.join(os.path.abspath(cwd), os.path.expanduser(cfg.store))}")
    sources = cfg.data.sources
    fixed = [os.path.join(os.path.abspath(cwd), _local_path(s)) if is_local(s) and not os.path.isabs(_local_path(s))
             else s for s in sources]
    if fixed != sources:
        out.append(f"data.source={fixed[0] if isinstance(cfg.data.source, str) else json.dumps(fixed)}")
    return out


# --------------------------------------------------------------------------- upload
def _matcher(base: Path, patterns: Iterable[str]) -> Callable[[Path], bool] | None:
    """gitignore-style matcher for paths under ``base``, as Ray builds it (its vendored pathspec)."""
    from ray._private.thirdparty.pathspec import PathSpec

    lines = [p for p in patterns if p.strip()]
    if not lines:
        return None
    spec = PathSpec.from_lines("gitwildmatch", lines)
    return lambda p: spec.match_file(p.relative_to(base).as_posix())


def _ignore_file(d: Path, name: str) -> Callable[[Path], bool] | None:
    f = d / name
    return _matcher(d, f.read_text().splitlines()) if f.is_file() else None


def default_excludes() -> list[str]:
    val = os.environ.get("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", RAY_DEFAULT_EXCLUDES)
    return [e.strip() for e in val.split(",") if e.strip()]


def upload_files(root: Path, excludes: list[str], *, include_gitignore: bool | None = None) -> list[tuple[str, int]]:
    """(relative path, bytes) of every file the Jobs client would zip from ``root``.

    Mirrors Ray 2.60's ``packaging._dir_travel``: at each directory its ``.gitignore`` (unless
    RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1) and ``.rayignore`` add patterns relative to that directory
    for everything below it; ``excludes`` (with Ray's defaults) match relative to the root; an
    excluded directory is skipped whole. Empty directories are listed with 0 bytes (Ray zips them).
    """
    if include_gitignore is None:
        include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    root = Path(root).absolute()
    top = _matcher(root, default_excludes() + list(excludes))
    out: list[tuple[str, int]] = []

    def walk(path: Path, matchers: list) -> None:
        here = list(matchers)
        if path.is_dir():
            here += [m for m in ((_ignore_file(path, ".gitignore") if include_gitignore else None),
                                 _ignore_file(path, ".rayignore")) if m]
        if path != root and any(m(path) for m in here):
            return
        if path.is_dir():
            children = sorted(path.iterdir())
            if not children and path != root:
                out.append((path.relative_to(root).as_posix() + "/", 0))
            for child in children:
                walk(child, here)
        elif path.is_file():
            out.append((path.relative_to(root).as_posix(), path.stat().st_size))

    walk(root, [top] if top else [])
    return out


def zip_bytes(files: list[tuple[str, int]]) -> int:
    """Size of Ray's package of these files: Ray zips without compression (ZIP_STORED), so the
    file bytes plus a local header (30 B) and a central-directory entry (46 B) per entry, each
    with the name, and the end record (22 B)."""
    return sum(size + 76 + 2 * len(name.encode()) for name, size in files) + 22


def biggest(files: list[tuple[str, int]], n: int = 5) -> list[tuple[str, int]]:
    """The largest top-level entries (directories summed, with a trailing /) and files, largest first."""
    by_top: dict[str, int] = {}
    for name, size in files:
        head, sep, _ = name.partition("/")
        by_top[head + sep] = by_top.get(head + sep, 0) + size
    entries = sorted(by_top.items(), key=lambda kv: -kv[1])[:n]
    big_files = [f for f in sorted(files, key=lambda f: -f[1]) if "/" in f[0] and f[0] not in by_top][:n]
    seen, out = set(), []
    for name, size in sorted(entries + big_files, key=lambda kv: -kv[1]):
        if name not in seen:
            seen.add(name)
            out.append((name, size))
    return out[:n]


def _mib(n: int) -> str:
    return f"{n / 1024 ** 2:.1f} MiB"


def check_upload(files: list[tuple[str, int]], root: Path, limit: int = UPLOAD_LIMIT) -> int:
    """The package size; raises ConfigError naming the biggest entries when it is over ``limit``."""
    total = zip_bytes(files)
    if total >= limit:
        top = ", ".join(f"{name} {_mib(size)}" for name, size in biggest(files))
        raise ConfigError(
            f"the job's working_dir {root} would upload {_mib(total)} ({len(files):,} files), over Ray's "
            f"{_mib(limit)} limit for a job's package; biggest: {top}. Leave them out: add them to "
            f"{root / '.rayignore'} (gitignore syntax) or pass --exclude PATTERN (e.g. --exclude "
            f"'/{biggest(files, 1)[0][0]}'); data and stores belong on shared storage the job reads directly")
    return total


def runtime_env(cfg, root: Path, excludes: list[str]) -> dict:
    """The job's runtime_env: the config's ray.runtime_env (pip, env_vars, ...) with the project
    root as working_dir, and mlops_ray as a py_module when the project does not hold it."""
    user = dict(cfg.ray.runtime_env or {})
    if user.get("working_dir"):
        raise ConfigError(f"ray.runtime_env.working_dir is {user['working_dir']!r}, but `mlops-ray submit` "
                          "uploads the project root as the job's working_dir; remove ray.runtime_env.working_dir "
                          "(or use `ray job submit` directly)")
    env = {**user, "working_dir": str(root), "excludes": list(user.get("excludes") or []) + excludes}
    if not (root / "mlops_ray" / "__init__.py").is_file():
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))      # .../mlops_ray
        env["py_modules"] = list(user.get("py_modules") or []) + [package]
    return env


# --------------------------------------------------------------------------- entrypoint
def set_args(args: list[str]) -> list[str]:
    """The ``--set key=value`` values among a command's arguments (to load the config locally)."""
    out = []
    for i, a in enumerate(args):
        if a == "--set" and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith("--set="):
            out.append(a[len("--set="):])
    return out


def split_command(args: list[str]) -> tuple[list[str], list[str]]:
    """(command words, the rest): ``["serve", "stop", "--json"]`` → (["serve", "stop"], ["--json"])."""
    if not args or args[0].startswith("-"):
        raise ConfigError("give the command to run after --: `mlops-ray submit CONFIG --address URL -- run` "
                          "(or validate, features, predict --data ... --out ..., monitor, ...)")
    if args[0] == "submit":
        raise ConfigError("`mlops-ray submit ... -- submit` would submit from inside a job; give the command "
                          "itself (run, predict, monitor, ...)")
    words = args[:2] if args[0] in GROUPS and args[1:2] and args[1] in GROUPS[args[0]] else args[:1]
    if args[0] in NO_CONFIG or tuple(args[:2]) in NO_CONFIG:
        raise ConfigError(f"`mlops-ray {' '.join(args[:2])}` takes no pipeline config; run it directly, or with "
                          "`ray job submit --working-dir . -- python -m mlops_ray.cli ...`")
    return words, args[len(words):]


def entrypoint(words: list[str], config_rel: str, rest: list[str], extra_sets: list[str] = (),
               verbose: bool = False) -> str:
    """The shell command the job runs, with the cluster's python and the config relative to the
    working_dir: ``python -m mlops_ray.cli [--verbose] WORDS CONFIG REST --set ...``."""
    cmd = ["python", "-m", "mlops_ray.cli", *(["--verbose"] if verbose else []), *words, config_rel, *rest]
    for s in extra_sets:
        cmd += ["--set", s]
    return shlex.join(cmd)


# --------------------------------------------------------------------------- address and token
def normalize_address(address: str) -> str:
    a = address.strip().rstrip("/")
    if a.startswith("ray://"):
        raise ConfigError(f"--address {address!r} is a Ray Client address; jobs are submitted to the dashboard: "
                          "pass its URL, e.g. http://HEAD:8265")
    if "://" not in a:
        a = "http://" + a
    if not a.startswith(("http://", "https://")):
        raise ConfigError(f"--address {address!r} is not an http(s) URL; pass the dashboard URL, e.g. {DEFAULT_ADDRESS}")
    return a


def default_address() -> str:
    """Like `ray job submit`: RAY_API_SERVER_ADDRESS, else an http RAY_ADDRESS, else 127.0.0.1:8265."""
    for key in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        v = os.environ.get(key, "")
        if v.startswith(("http://", "https://")):
            return v
    return DEFAULT_ADDRESS


def auth_headers() -> tuple[dict, str | None]:
    """(headers, token source): ``Authorization: Bearer`` when a token is available, so the Jobs
    client sends it whatever RAY_AUTH_MODE says. The source names an env var or a file, never the token."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}, None
    found = read_auth_token()
    if found is None:
        return {}, None
    return {"Authorization": f"Bearer {found[0]}"}, found[1]


HOW_TO_START = ("start one with `ray start --head --dashboard-host 127.0.0.1` (dashboard on port 8265) or "
                "`cluster/local-cluster.sh up`, or pass --address with the dashboard URL of a running cluster")


def auth_error(status: int, address: str, source: str | None) -> JobSubmitError:
    """The message for a 401 (no token) or 403 (wrong token) from the dashboard."""
    how = ("pass the cluster's token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it, or "
           "write it to ~/.ray/auth_token (`ray get-auth-token` on the head prints it); Ray's own `ray job` "
           "commands also need RAY_AUTH_MODE=token")
    if status == 401 or source is None:
        return JobSubmitError(f"the Ray cluster at {address} requires a token (token authentication is on) and "
                              f"none was sent; {how}")
    return JobSubmitError(f"the Ray cluster at {address} rejected the token from {source} (HTTP {status}); "
                          f"{how}")


def probe(address: str, headers: dict, token_source: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """GET /api/version with a short timeout; the cluster's Ray version, or a JobSubmitError that
    says what answered (nothing, not a Ray dashboard, an auth refusal) and the fix."""
    req = urllib.request.Request(f"{address}/api/version", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            body = r.read(65536)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise auth_error(e.code, address, token_source) from None
        raise JobSubmitError(f"{address} answered GET /api/version with HTTP {e.code}: it is not a Ray dashboard "
                             "with the Jobs API; pass the dashboard URL (port 8265 by default, not the GCS port "
                             "6379 or Serve's 8000), or " + HOW_TO_START) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise JobSubmitError(f"cannot reach the Ray dashboard at {address} ({reason}); {HOW_TO_START}") from None
    except Exception as e:          # http.client errors: something answered, not in HTTP/1.1
        raise JobSubmitError(f"{address} did not answer as an HTTP server ({type(e).__name__}): it is not a Ray "
                             "dashboard; pass the dashboard URL (port 8265 by default)") from None
    try:
        version = json.loads(body)["ray_version"]
    except (ValueError, KeyError, TypeError):
        raise JobSubmitError(f"{address} answered GET /api/version without a Ray version: it is not a Ray "
                             "dashboard with the Jobs API; pass the dashboard URL (port 8265 by default)") from None
    return str(version)


def follow_commands(job_id: str, address: str, token_sent: bool) -> list[str]:
    mode = "RAY_AUTH_MODE=token " if token_sent else ""
    return [f"{mode}ray job logs -f {job_id} --address {address}",
            f"{mode}ray job status {job_id} --address {address}",
            f"{mode}ray job stop {job_id} --address {address}"]


def last_lines(text: str, n: int = LAST_LINES) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-n:]


def outcome_error(job_id: str, status: str, info, logs: str) -> JobFailed:
    """JobFailed for a FAILED or STOPPED job: its id, status message, exit code and last log lines."""
    lines = last_lines(logs)
    tail = ("\n  last log lines:\n" + "\n".join(f"    {line}" for line in lines)) if lines else \
        "\n  (the job wrote no log lines)"
    # Ray's message of a failed entrypoint appends the whole log ("..., last available logs ..."): keep the head
    message = (getattr(info, "message", None) or "").split(", last available logs")[0].strip()
    message = message.splitlines()[0] if message else ""
    code = getattr(info, "driver_exit_code", None)
    if status == "STOPPED":
        head = f"job {job_id} was stopped before it finished" + (f" ({message})" if message else "")
    else:
        head = f"job {job_id} FAILED" + (f" with exit code {code}" if code is not None else "") + \
            (f": {message}" if message else "")
    return JobFailed(head + tail, details={"job_id": job_id, "status": status, "driver_exit_code": code,
                                           "last_lines": lines})


# --------------------------------------------------------------------------- submit
@dataclass(frozen=True)
class Plan:
    """What would be submitted: computed locally, before any request."""
    root: Path
    config: str
    entrypoint: str
    runtime_env: dict
    files: int
    upload_bytes: int


def plan(cfg, config_path: str, args: list[str], *, project_dir: str | None = None, excludes: Iterable[str] = (),
         max_upload_bytes: int = UPLOAD_LIMIT, verbose: bool = False, cwd: str | None = None) -> Plan:
    cwd = cwd or os.getcwd()
    root = find_project_root(project_dir or cwd)
    config_rel = config_in_project(config_path, root)
    words, rest = split_command(args)
    patterns = PROJECT_EXCLUDES + local_excludes(cfg, root) + list(excludes)
    env = runtime_env(cfg, root, patterns)
    files = upload_files(root, env["excludes"])
    names = {name for name, _ in files}
    if config_rel not in names:
        raise ConfigError(f"config {config_rel} would not be uploaded: .gitignore, .rayignore or an exclude "
                          f"leaves it out of {root}; move it (e.g. to configs/) or stop ignoring it")
    if (root / "mlops_ray" / "__init__.py").is_file() and "mlops_ray/__init__.py" not in names:
        raise ConfigError(f"mlops_ray/ would not be uploaded from {root}: .gitignore, .rayignore or an exclude "
                          "leaves it out, and the job imports it from the working_dir; stop ignoring it")
    size = check_upload(files, root, max_upload_bytes)
    extra = absolute_overrides(cfg, cwd)
    if cfg.ray.address and cfg.ray.address != "auto":
        extra.append("ray.address=auto")     # in the job: the cluster it runs on, whatever the laptop used
    return Plan(root, config_rel, entrypoint(words, config_rel, rest, extra, verbose), env, len(files), size)


def _client(address: str, headers: dict, verbose: bool = False):
    from ray.job_submission import JobSubmissionClient
    if not verbose:
        # the SDK's modules set their loggers to INFO when imported: each upload step, "WebSocket closed"; and
        # the working_dir warns "'.git' is now ignored by default", which is what we want. Other warnings stay.
        for name, level in (("ray.dashboard.modules.dashboard_sdk", logging.WARNING),
                            ("ray.dashboard.modules.job.sdk", logging.WARNING),
                            ("ray._private.runtime_env.packaging", logging.WARNING),
                            ("ray._private.runtime_env.working_dir", logging.ERROR)):
            logging.getLogger(name).setLevel(level)
    return JobSubmissionClient(address, headers=headers)


def _request_error(e: Exception, address: str, source: str | None) -> JobSubmitError:
    text = str(e)
    if type(e).__name__ == "AuthenticationError":
        return auth_error(403 if "failed" in text.lower() else 401, address, source)
    if "status code 404" in text:
        return JobSubmitError(f"{address} has no Jobs API (HTTP 404 from /api/jobs/): is the dashboard running "
                              "with Ray's default modules (`pip install 'ray[default]'` on the head)?")
    return JobSubmitError(f"the Ray dashboard at {address} refused the job: {text}")


async def _tail(client, job_id: str, on_log: Callable[[str], None], tail: deque, first: list) -> None:
    async for chunk in client.tail_job_logs(job_id):
        if not first:
            first.append(time.perf_counter())
        tail.extend(chunk.splitlines())
        on_log(chunk)


def submit(cfg, config_path: str, args: list[str], *, address: str | None = None, wait: bool = False,
           excludes: Iterable[str] = (), max_upload_bytes: int = UPLOAD_LIMIT, project_dir: str | None = None,
           verbose: bool = False, on_log: Callable[[str], None] | None = None,
           on_submitted: Callable[[dict], None] | None = None,
           client_factory: Callable[[str, dict, bool], object] | None = None, poll_s: float = 0.5) -> dict:
    """Submit ``args`` (an mlops-ray command) on ``cfg`` to the cluster at ``address``.

    Without ``wait``: returns once the job is accepted. With ``wait``: calls ``on_submitted(result)``
    (the job id, so an interrupted wait leaves the user what to follow), streams the job's log
    chunks to ``on_log`` and returns when it SUCCEEDED, raising ``JobFailed`` when it FAILED or
    was STOPPED. The result holds timings (seconds since the call): ``submitted`` (package
    uploaded, job accepted), ``first_log`` and ``done``.
    """
    t0 = time.perf_counter()
    p = plan(cfg, config_path, args, project_dir=project_dir, excludes=excludes,
             max_upload_bytes=max_upload_bytes, verbose=verbose)
    address = normalize_address(address or default_address())
    headers, source = auth_headers()
    version = probe(address, headers, source)
    try:
        client = (client_factory or _client)(address, headers, verbose)
        job_id = client.submit_job(entrypoint=p.entrypoint, runtime_env=p.runtime_env,
                                   metadata={"mlops_ray_pipeline": cfg.name, "mlops_ray_command": " ".join(args[:2])})
    except Exception as e:        # the SDK raises RuntimeError, ConnectionError, AuthenticationError
        raise _request_error(e, address, source) from None
    timings = {"submitted": time.perf_counter() - t0}
    res = {"job_id": job_id, "address": address, "ray_version": version, "status": "PENDING",
           "dashboard_url": f"{address}/#/jobs/{job_id}", "entrypoint": p.entrypoint, "working_dir": str(p.root),
           "upload_files": p.files, "upload_bytes": p.upload_bytes, "token_source": source,
           "follow": follow_commands(job_id, address, bool(source)), "seconds": timings}
    if not wait:
        return res
    if on_submitted:
        on_submitted(res)
    tail: deque = deque(maxlen=200)
    first: list = []
    try:
        asyncio.run(_tail(client, job_id, on_log or (lambda chunk: None), tail, first))
    except RuntimeError:
        pass    # the log stream closed early: the status below still tells the outcome
    while (status := str(client.get_job_status(job_id)).split(".")[-1]) not in TERMINAL:
        time.sleep(poll_s)
    if first:
        timings["first_log"] = first[0] - t0
    timings["done"] = time.perf_counter() - t0
    info = client.get_job_info(job_id)
    res.update(status=status, driver_exit_code=getattr(info, "driver_exit_code", None),
               message=getattr(info, "message", None))
    if status != "SUCCEEDED":
        try:
            logs = client.get_job_logs(job_id)
        except Exception:       # the logs are a courtesy here; the outcome is what matters
            logs = "\n".join(tail)
        raise outcome_error(job_id, status, info, logs)
    return res
