"""The MLflow client: one pipeline's experiment and registered model, and the alias policy.

In: ``RegistryConfig``, the store (local directory or URI) and the pipeline name.
Out: ``Registry`` -- ``start_run`` gives a ``RunLog`` (``runlog.py``), ``register`` logs a
bundle directory (``bundle.py``) and makes it a model version with alias ``challenger``,
``set_alias``/``get_alias`` move ``champion`` and ``challenger``, ``load_bundle(ref)`` brings a
version back as a ``Bundle`` (downloaded once into the bundle cache), ``check_reachable``
fails fast when the tracking store cannot be used.

Everything goes through an ``MlflowClient`` built with explicit URIs, never the fluent API, so
no global tracking URI or active run leaks between pipelines, tests or Serve replicas. Every
MLflow failure leaves as a ``RegistryError`` that names the (credential-masked) tracking URI
and the fix. Without ``registry.tracking_uri`` a local store holds the SQLite tracking store
and the artifacts (locations from ``storage.catalog``).

mlflow is imported inside functions, never at the top: importing it costs about 1.3 s and
configures logging, and serving, monitoring and status import this module without always
reaching MLflow (a test checks that importing the package does not import mlflow).
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager

from mlops_ray.config import RegistryConfig
from mlops_ray.data.features import FeatureSpec
from mlops_ray.errors import ConfigError, RegistryError
from mlops_ray.registry.bundle import FILES, Bundle
from mlops_ray.registry.bundle import load_bundle as load_bundle_dir
from mlops_ray.registry.bundle import load_spec as load_spec_dir
from mlops_ray.registry.runlog import RunLog, as_text, clip, mask_uri, mlflow_key, tag_dict
from mlops_ray.storage.catalog import artifacts_dir, bundle_cache_dir, tracking_db

# mlflow is imported inside functions (measured import cost, see the module docstring).

CHAMPION = "champion"
CHALLENGER = "challenger"
BUNDLE_PATH = "bundle"                 # artifact path of the bundle inside its run
READY_TIMEOUT_S = 120.0
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
_EXTERNAL_MODULES = {"mlflow", "requests", "urllib3", "sqlalchemy", "alembic", "botocore", "google", "azure"}


# --------------------------------------------------------------------------- plumbing
def _is_external(e: BaseException) -> bool:
    """A failure of MLflow, its HTTP/DB stack or the file system, as opposed to a bug here."""
    if isinstance(e, (OSError, sqlite3.Error)):
        return True
    return any(c.__module__.split(".")[0] in _EXTERNAL_MODULES for c in type(e).__mro__)


def _short(e: BaseException, limit: int = 400) -> str:
    msg = getattr(e, "message", None) or str(e) or type(e).__name__
    return clip(mask_uri(" ".join(str(msg).split())), limit)


def _code(e: BaseException) -> str | None:
    return getattr(e, "error_code", None)


def _mlflow():
    """Import mlflow on first use, with its console kept quiet.

    Defaults, only where the user has not set them: fewer HTTP retries than MLflow's 7
    with exponential backoff (minutes of silence when a server dies mid-run); no tqdm
    progress bars when downloading a bundle; and no "View run ... at: URL" lines, which
    MLflow writes to stdout (breaking `--json` output, and showing any user:password in
    the URI) each time a run against a server ends.
    """
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    for name in ("mlflow", "alembic"):     # "Creating initial MLflow database tables...", migrations
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def _local_dir(store: str) -> str | None:
    """Absolute local path of the store, or None when it is an object-store URI."""
    if store.startswith("file://"):
        return os.path.abspath(urllib.parse.urlsplit(store).path)
    if "://" in store:
        return None
    return os.path.abspath(os.path.expanduser(store))


def _sqlite_path(uri: str) -> str | None:
    """File of a sqlite:/// URI (None for in-memory)."""
    rest = uri.split("://", 1)[1] if "://" in uri else ""
    if not rest.startswith("/") or rest == "/" or ":memory:" in rest:
        return None
    path = rest[1:].split("?", 1)[0]        # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
    return os.path.abspath(path) if path else None


# --------------------------------------------------------------------------- registry
class Registry:
    """One pipeline's MLflow experiment and registered model."""

    def __init__(self, cfg: RegistryConfig, store: str, pipeline_name: str):
        self.cfg = cfg
        self.model_name = cfg.model_name or pipeline_name
        self.experiment_name = cfg.experiment or pipeline_name
        local = _local_dir(store)
        if cfg.tracking_uri:
            self.tracking_uri = cfg.tracking_uri
            self._artifact_location = None      # the server (or the user's database) decides
        elif local is None:
            raise ConfigError(f"store {store!r} is not a local directory, so the default SQLite tracking store "
                              "cannot live in it; set registry.tracking_uri to an MLflow server "
                              "(http://host:5000) or use a local store")
        else:                                   # created by the first run (see ``client``), not here
            self.tracking_uri = f"sqlite:///{tracking_db(local)}"
            self._artifact_location = artifacts_dir(local)
        self.cache_dir = bundle_cache_dir(local)
        self.display_uri = mask_uri(self.tracking_uri)
        self._client = None
        self._experiment_id: str | None = None

    def __repr__(self) -> str:
        return f"Registry(model={self.model_name!r}, tracking_uri={self.display_uri!r})"

    def __getstate__(self):                 # picklable for Ray tasks and Serve replicas
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    # ---- plumbing
    @property
    def client(self):
        """The MlflowClient of an existing tracking store, built on first use. A SQLite store that does
        not exist yet holds no model: a read is the "no registered model" RegistryError and creates no
        mlflow.db (a failed deploy, status or report changes nothing); only ``start_run`` creates it."""
        if self._client is None:
            if not self._store_exists():
                raise RegistryError(self._no_model(self.model_name))
            self._open()
        return self._client

    def _open(self) -> None:
        """Build the client, creating a missing SQLite store (its migrations take ~2-3 s)."""
        path = self._sqlite_file()
        if path:
            with self._errors("creating the directory of the tracking store"):
                os.makedirs(os.path.dirname(path), exist_ok=True)
        mlflow = _mlflow()
        with self._errors("opening the tracking store"):
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _sqlite_file(self) -> str | None:
        return _sqlite_path(self.tracking_uri) if self.tracking_uri.startswith("sqlite:") else None

    def _store_exists(self) -> bool:
        """False for a SQLite store whose file is missing or empty (nothing was ever logged to it)."""
        path = self._sqlite_file()
        return path is None or (os.path.isfile(path) and os.path.getsize(path) > 0)

    def _fix(self) -> str:
        if self.tracking_uri.startswith(("http://", "https://")):
            return "start the server or fix registry.tracking_uri"
        return "check that the database and its directory are writable, or fix registry.tracking_uri"

    @contextmanager
    def _errors(self, doing: str, fix: str | None = None):
        try:
            yield
        except RegistryError:
            raise
        except Exception as e:
            if not _is_external(e):
                raise
            raise RegistryError(f"{doing} failed (MLflow at {self.display_uri}): {_short(e)}; "
                                f"{fix or self._fix()}") from None

    def check_reachable(self, timeout_s: float = 5.0) -> None:
        """Raise RegistryError within about ``timeout_s`` if the tracking store cannot be used."""
        uri = self.tracking_uri
        if uri.startswith(("http://", "https://")):
            return _check_http(uri, timeout_s)
        if uri.startswith("sqlite:"):
            path = _sqlite_path(uri)
            if path is None:
                return
            if not os.path.exists(path):        # the first run creates it: check that it can, create nothing
                parent = os.path.dirname(path)
                while not os.path.exists(parent) and os.path.dirname(parent) != parent:
                    parent = os.path.dirname(parent)
                if not (os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)):
                    raise RegistryError(f"the MLflow database {path} cannot be created ({parent} is not a "
                                        "writable directory); fix the permissions or set registry.tracking_uri")
                return
            try:
                con = sqlite3.connect(path, timeout=timeout_s)
                try:
                    con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                finally:
                    con.close()
            except (OSError, sqlite3.Error) as e:
                raise RegistryError(f"the MLflow database {path} cannot be opened ({e}); fix or move it, "
                                    "or set registry.tracking_uri") from None
            return
        # any other backend (postgresql://, mysql://, databricks, ...): one cheap call, bounded in time
        _bounded(lambda: self.client.search_experiments(max_results=1), timeout_s,
                 lambda reason: RegistryError(f"the MLflow tracking store {self.display_uri} is not usable "
                                              f"({reason}); {self._fix()}"))

    def _experiment(self) -> str:
        if self._experiment_id is None:
            if self._client is None:
                self._open()                    # the one place a new SQLite store is created
            client = self.client
            with self._errors(f"looking up experiment {self.experiment_name!r}"):
                exp = client.get_experiment_by_name(self.experiment_name)
                if exp is None:
                    from mlflow.exceptions import MlflowException
                    try:
                        self._experiment_id = client.create_experiment(
                            self.experiment_name, artifact_location=self._artifact_location)
                        return self._experiment_id
                    except MlflowException as e:     # created concurrently by another process
                        if _code(e) != "RESOURCE_ALREADY_EXISTS":
                            raise
                        exp = client.get_experiment_by_name(self.experiment_name)
            if exp.lifecycle_stage == "deleted":
                raise RegistryError(f"experiment {self.experiment_name!r} at {self.display_uri} is deleted; "
                                    f"restore it (mlflow experiments restore --experiment-id "
                                    f"{exp.experiment_id}) or set registry.experiment to a new name")
            self._experiment_id = exp.experiment_id
        return self._experiment_id

    # ---- runs
    def start_run(self, run_name: str, tags: dict | None = None) -> RunLog:
        """Create a run; use the result as a context manager (FAILED on exception, else FINISHED)."""
        experiment_id = self._experiment()
        with self._errors(f"starting run {run_name!r}"):
            run = self.client.create_run(experiment_id, run_name=run_name, tags=tag_dict(tags))
        return RunLog(self, run.info.run_id, run.info.artifact_uri, experiment_id)

    # ---- model versions and aliases
    def register(self, run: RunLog, bundle_dir: str, tags: dict | None = None) -> str:
        """Log ``bundle_dir`` under the run's "bundle" artifacts and make it a model version.

        The new version gets alias "challenger"; returns its version string once READY.
        """
        missing = [f for f in FILES if not os.path.isfile(os.path.join(bundle_dir, f))]
        if missing:
            raise RegistryError(f"model bundle {bundle_dir!r} is incomplete (missing {', '.join(missing)}); "
                                "write it with bundle.write_bundle before registering")
        client = self.client
        with self._errors(f"uploading the model bundle of run {run.run_id}"):
            client.log_artifacts(run.run_id, bundle_dir, BUNDLE_PATH)
        self._ensure_model()
        source = f"{run.artifact_uri.rstrip('/')}/{BUNDLE_PATH}"
        with self._errors(f"creating a version of model {self.model_name!r}"):
            mv = client.create_model_version(self.model_name, source=source, run_id=run.run_id,
                                             tags=tag_dict(tags), await_creation_for=0)
        version = self._wait_ready(str(mv.version), mv.status)
        self.set_alias(CHALLENGER, version)
        run.set_tags({"registered_model": self.model_name, "registered_version": version})
        return version

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException
        client = self.client
        with self._errors(f"creating registered model {self.model_name!r}"):
            try:
                client.get_registered_model(self.model_name)
                return
            except MlflowException as e:
                if _code(e) != "RESOURCE_DOES_NOT_EXIST":
                    raise
            try:
                client.create_registered_model(self.model_name, tags={"created_by": "mlops-ray"})
            except MlflowException as e:
                if _code(e) != "RESOURCE_ALREADY_EXISTS":
                    raise

    def _wait_ready(self, version: str, status: str, timeout_s: float = READY_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while status != "READY":
            if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                with self._errors(f"reading version {version} of model {self.model_name!r}"):
                    message = self.client.get_model_version(self.model_name, version).status_message
                what = "failed to register" if status == "FAILED_REGISTRATION" else \
                    f"is still {status} after {timeout_s:.0f} s"
                raise RegistryError(f"version {version} of model {self.model_name!r} {what}"
                                    f"{f' ({message})' if message else ''}; check the tracking server "
                                    "logs and re-run the pipeline")
            time.sleep(0.2)
            with self._errors(f"reading version {version} of model {self.model_name!r}"):
                status = self.client.get_model_version(self.model_name, version).status
        return version

    def set_alias(self, alias: str, version: str) -> None:
        client = self.client                    # an empty store: "no registered model", not a new database
        with self._errors(f"setting alias {alias!r} of model {self.model_name!r} to version {version}",
                          fix=f"check that version {version} exists, or {self._fix()}"):
            client.set_registered_model_alias(self.model_name, alias, str(version))

    def _aliases(self, name: str) -> dict[str, str] | None:
        """alias -> version of a registered model; None if there is no such model."""
        if not self._store_exists():           # nothing registered yet; reading must not create the store
            return None
        from mlflow.exceptions import MlflowException
        client = self.client
        with self._errors(f"reading registered model {name!r}"):
            try:
                model = client.get_registered_model(name)
            except MlflowException as e:
                if _code(e) == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise
        return {a: str(v) for a, v in (model.aliases or {}).items()}

    def aliases_of(self, version: str) -> list[str]:
        """The aliases pointing at ``version`` now (read from the registry, never cached)."""
        return sorted(a for a, v in (self._aliases(self.model_name) or {}).items() if str(v) == str(version))

    def get_alias(self, alias: str) -> str | None:
        """Version the alias points to; None when there is no such alias or no such model."""
        return (self._aliases(self.model_name) or {}).get(alias)

    def tag_version(self, version: str, key: str, value: str) -> None:
        with self._errors(f"tagging version {version} of model {self.model_name!r}"):
            self.client.set_model_version_tag(self.model_name, str(version), mlflow_key(key), mask_uri(as_text(value)))

    def version_tags(self, version: str) -> dict:
        return dict(self._version(self.model_name, str(version), None).tags or {})

    # ---- bundles out
    def load_bundle(self, ref: str) -> Bundle:
        """Bundle of "champion", "@alias", "3", "models:/NAME/3" or "models:/NAME@alias".

        The alias is resolved on every call; a version's artifacts are downloaded once into
        the bundle cache (``catalog.bundle_cache_dir``; versions are immutable) and reused from there.
        """
        return self._fetch(*self._lookup(ref))

    def resolve(self, ref: str) -> str:
        """The version number a reference ("champion", "@alias", "3", "models:/NAME/3") points to now.
        Raises RegistryError naming the model, alias or version when there is none."""
        name, version, alias = self._parse_ref(ref)
        if name != self.model_name:
            raise RegistryError(f"model reference {ref!r} names model {name!r}, but this pipeline serves "
                                f"{self.model_name!r}; set registry.model_name or fix the reference")
        if alias is not None:
            version = self._alias_target(name, alias)
        return str(self._version(name, version, alias).version)

    def version_run_id(self, version: str) -> str | None:
        return self._version(self.model_name, str(version), None).run_id

    def run_json(self, run_id: str, name: str):
        """A JSON artifact of a run (e.g. tuning.json, validation.json); None if it has none."""
        if not self._store_exists():
            return None
        from mlflow.exceptions import MlflowException
        with tempfile.TemporaryDirectory() as d:
            try:
                path = self.client.download_artifacts(run_id, name, d)
            except (MlflowException, OSError):
                return None
            with open(path) as f:
                return json.load(f)

    def champion(self) -> tuple[str, Bundle] | None:
        """(version, bundle) of the champion; None before the first promotion."""
        aliases = self._aliases(self.model_name)
        if not aliases or CHAMPION not in aliases:
            return None
        mv = self._version(self.model_name, aliases[CHAMPION], CHAMPION)
        return str(mv.version), self._fetch(self.model_name, mv, CHAMPION)

    def _parse_ref(self, ref: str) -> tuple[str, str | None, str | None]:
        """-> (model name, version, alias); exactly one of version and alias is set."""
        text = str(ref).strip()
        name = self.model_name
        if text.startswith("models:/"):
            body = text[len("models:/"):]
            if "@" in body:
                name, alias = body.rsplit("@", 1)
                if name and alias:
                    return name, None, alias
            elif "/" in body:
                name, version = body.rsplit("/", 1)
                if name and version.isdigit():
                    return name, str(int(version)), None
            raise RegistryError(f"model reference {text!r} is not understood; write models:/NAME/VERSION "
                                "or models:/NAME@ALIAS (stages such as /Production are not supported)")
        if text.startswith("@"):
            text = text[1:]
            if text:
                return name, None, text
        elif re.fullmatch(r"[vV]?\d+", text):
            return name, str(int(text.lstrip("vV"))), None
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", text):
            return name, None, text
        raise RegistryError(f"model reference {str(ref)!r} is not understood; use an alias (champion, "
                            "challenger, @name), a version number, models:/NAME/VERSION or models:/NAME@ALIAS")

    def _alias_target(self, name: str, alias: str) -> str:
        aliases = self._aliases(name)
        if aliases is None:
            raise RegistryError(self._no_model(name))
        if alias not in aliases:
            known = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
            raise RegistryError(f"model {name!r} has no alias {alias!r} (aliases: {known}); run the pipeline "
                                f"to register and promote a version, or set the alias on an existing version")
        return aliases[alias]

    def _no_model(self, name: str) -> str:
        return (f"there is no registered model {name!r} at {self.display_uri}; run the pipeline to train "
                "and register one, or fix registry.model_name / registry.tracking_uri")

    def _version(self, name: str, version: str, alias: str | None):
        if not self._store_exists():
            raise RegistryError(self._no_model(name))
        from mlflow.exceptions import MlflowException
        client = self.client
        with self._errors(f"reading version {version} of model {name!r}"):
            try:
                mv = client.get_model_version(name, version)
            except MlflowException as e:
                if _code(e) not in _NOT_FOUND:
                    raise
                mv = None
        if mv is None:
            if self._aliases(name) is None:
                raise RegistryError(self._no_model(name))
            raise RegistryError(self._broken(name, version, alias, f"does not exist ({self._versions(name)})"))
        if mv.status != "READY":
            raise RegistryError(self._broken(name, version, alias, f"is not ready (status {mv.status})"))
        return mv

    def _versions(self, name: str) -> str:
        """The versions that exist, for a message: "versions: 1, 2" (or the first and last few)."""
        with self._errors(f"listing the versions of model {name!r}"):
            found = sorted(int(mv.version) for mv in self.client.search_model_versions(f"name = '{name}'"))
        if not found:
            return "it has no versions"
        shown = found if len(found) <= 8 else [*found[:3], "...", *found[-3:]]
        return (f"{len(found)} versions: " if len(found) > 8 else "versions: ") + ", ".join(map(str, shown))

    @staticmethod
    def _broken(name: str, version: str, alias: str | None, problem: str) -> str:
        if alias is not None:
            return (f"alias {alias!r} of model {name!r} points to version {version}, which {problem}; "
                    "re-run the pipeline or move the alias")
        return f"version {version} of model {name!r} {problem}; re-run the pipeline or use another version"

    def load_spec(self, ref: str) -> FeatureSpec:
        """The FeatureSpec of a version's bundle (its features, classes), without loading the booster."""
        return self._fetch(*self._lookup(ref), load_spec_dir)

    def _lookup(self, ref: str) -> tuple[str, object, str | None]:
        """(model name, its model version as the registry has it now, alias or None) of a reference."""
        name, version, alias = self._parse_ref(ref)
        if alias is not None:
            version = self._alias_target(name, alias)
        return name, self._version(name, version, alias), alias

    def _fetch(self, name: str, mv, alias: str | None, load=load_bundle_dir):
        """A version's bundle (or what ``load`` reads of it), from the cache (``_cached``)."""
        dest = self._cached(name, mv, alias)
        try:
            return load(dest)
        except RegistryError as e:
            raise RegistryError(self._broken(name, str(mv.version), alias, f"cannot be loaded: {e.message}")) from None

    def _cached(self, name: str, mv, alias: str | None) -> str:
        """Download a version's bundle into the cache (once: versions are immutable); its directory."""
        version = str(mv.version)
        with self._errors(f"resolving the artifacts of version {version} of model {name!r}"):
            uri = self.client.get_model_version_download_uri(name, version)
        key = hashlib.sha256(f"{self.display_uri}|{uri}".encode()).hexdigest()[:12]
        parent = os.path.join(self.cache_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", name))
        dest = os.path.join(parent, f"v{version}-{key}")
        if not _complete(dest):
            os.makedirs(parent, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=".download-", dir=parent)
            try:
                try:
                    local = _mlflow().artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp,
                                                                   tracking_uri=self.tracking_uri)
                except Exception as e:
                    if not _is_external(e):
                        raise
                    problem = (f"has no model bundle at {mask_uri(uri)} (its artifacts were deleted)"
                               if "No such artifact" in str(e) or isinstance(e, FileNotFoundError)
                               else f"cannot be downloaded from {mask_uri(uri)} ({_short(e)})")
                    raise RegistryError(self._broken(name, version, alias, problem)) from None
                missing = [f for f in FILES if not os.path.isfile(os.path.join(local, f))]
                if missing:
                    what = ("has no model bundle" if len(missing) == len(FILES)
                            else f"has an incomplete model bundle (missing {', '.join(missing)})")
                    raise RegistryError(self._broken(name, version, alias, f"{what} at {mask_uri(uri)}"))
                if not _complete(dest):           # another replica may have cached it meanwhile
                    shutil.rmtree(dest, ignore_errors=True)
                    try:
                        os.replace(local, dest)
                    except OSError:
                        if not _complete(dest):
                            raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return dest


def _complete(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in FILES)


# --------------------------------------------------------------------------- reachability
def _bounded(fn, timeout_s: float, error):
    """Run fn in a daemon thread; raise error(reason) if it fails or takes longer than timeout_s."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the caller below
            out["error"] = e

    t = threading.Thread(target=target, name="mlops-ray-registry-probe", daemon=True)
    t.start()
    t.join(timeout_s + 0.5)
    if t.is_alive():
        raise error(f"no answer within {timeout_s:g} s")
    if "error" in out:
        raise error(_short(out["error"], 200))
    return out.get("value")


def _check_http(uri: str, timeout_s: float) -> None:
    """GET {uri}/health with a short timeout and no retries (MLflow's own client retries for minutes)."""
    shown = mask_uri(uri)
    parts = urllib.parse.urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    url = urllib.parse.urlunsplit((parts.scheme, host, parts.path.rstrip("/") + "/health", "", ""))
    headers = {}
    user = urllib.parse.unquote(parts.username) if parts.username else os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = (urllib.parse.unquote(parts.password) if parts.password
                else os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"

    def probe() -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except urllib.error.URLError as e:
            raise ConnectionError(str(e.reason)) from None
        except http.client.HTTPException:
            return -1                           # something listens there, but does not answer HTTP

    status = _bounded(probe, timeout_s, lambda reason: RegistryError(
        f"the MLflow tracking server {shown} is not reachable ({reason}); "
        "start the server or fix registry.tracking_uri"))
    if status in (401, 403):
        raise RegistryError(f"the MLflow tracking server {shown} rejected the credentials (HTTP {status}); "
                            "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or fix registry.tracking_uri")
    if status == -1:
        raise RegistryError(f"{shown} does not answer HTTP (another kind of server listens on that port), so it "
                            "is not an MLflow tracking server; start the server or fix registry.tracking_uri")
    if status != 200:
        raise RegistryError(f"{shown} answered HTTP {status} on /health, so it does not look like an MLflow "
                            "tracking server; start the server or fix registry.tracking_uri")
