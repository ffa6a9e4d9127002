"""Check deployment manifests before a cluster sees them (`mlops-ray cluster check FILE...`).

In: YAML files, one or more documents each: KubeRay ``RayCluster`` / ``RayJob`` / ``RayService``
(``ray.io/v1``) and Ray cluster-launcher configs (``ray up``). Out: a list of ``Problem``s (file,
field path, message with the fix); ``check_files`` raises one ``ConfigError`` (exit 2) naming all
of them, or returns one summary per document.

A document is checked against its schema, then by rules a schema cannot express:

- schema: the KubeRay v1 CRD's ``openAPIV3Schema`` with unknown fields rejected (as
  ``kubectl apply``'s strict field validation does), or the ``ray-schema.json`` Ray's wheel ships;
- KubeRay's controller (``ray-operator/controllers/ray/utils/validation.go``), which checks only
  when it reconciles, after ``kubectl apply`` said "created": a RayJob has exactly one of
  ``rayClusterSpec`` / ``clusterSelector``; token auth needs ``rayVersion`` >= 2.52.0; a group sets
  resources in ``rayStartParams`` or in ``resources``, not both; ``serveConfigV2`` parses as YAML
  and is a config Ray Serve accepts (``ServeDeploySchema``); ``runtimeEnvYAML`` is a YAML mapping;
- ``rayStartParams`` values are strings (the CRD types them so; the API server's message does not
  say what to write instead);
- what ``ray up`` checks after filling defaults: ``head_node_type`` is a node type, the sum of
  ``min_workers`` fits ``max_workers``;
- this project's: every config file a manifest references (``mlops-ray run configs/x.yaml`` in an
  entrypoint or a command, a local ``file_mounts`` source) exists under the project root; an
  mlops-ray Serve application's ``args.config`` is a valid pipeline config; no secret is inline.

Pure functions on parsed documents; only the ``load_*`` / ``*_schema`` functions read files.
No Ray is started; ``ray.serve.schema`` is imported only when a RayService is checked.
"""
from __future__ import annotations

import copy
import difflib
import functools
import gzip
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import ValidationError

from mlops_ray.config import config_from_dict
from mlops_ray.errors import ConfigError

# Imported where used, for their import cost (python -X importtime): jsonschema, ray 0.7 s.

KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
LAUNCHER = "cluster-launcher"
SERVE_IMPORT_PATH = "mlops_ray.serve.app:app_builder"
MIN_TOKEN_AUTH_RAY = (2, 52, 0)
CRD_ENV = "MLOPS_RAY_KUBERAY_CRDS"

Finding = tuple[str, str]          # (field path, message)


@dataclass(frozen=True)
class Problem:
    file: str
    path: str                      # field path in the document ("" = the document itself)
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path or '(document)'}: {self.message}"


# --------------------------------------------------------------------------- schemas, root
def project_root(start: str | os.PathLike) -> Path:
    """The nearest folder at or above ``start`` holding a pyproject.toml; else the working dir."""
    p = Path(start).resolve()
    for d in ([p] if p.is_dir() else []) + list(p.parents):
        if (d / "pyproject.toml").is_file():
            return d
    return Path.cwd()


def default_crd_dir() -> Path:
    """$MLOPS_RAY_KUBERAY_CRDS, else the KubeRay CRDs shipped in the package (mlops_ray/cluster/schemas/kuberay)."""
    env = os.environ.get(CRD_ENV)
    return Path(env) if env else Path(__file__).resolve().parent / "schemas" / "kuberay"


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str, crd_dir: str) -> dict:
    """The v1 ``openAPIV3Schema`` of KubeRay's CRD for ``kind``, unknown fields made errors."""
    name = f"ray.io_{KINDS[kind]}.yaml"
    for path in (Path(crd_dir) / name, Path(crd_dir) / f"{name}.gz"):
        if path.is_file():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as f:
                crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            break
    else:
        raise ConfigError(f"the KubeRay CRD {name} (or {name}.gz) is not in {crd_dir}; point --crds (or "
                          f"${CRD_ENV}) at a folder holding KubeRay's ray-operator/config/crd/bases/ files")
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            return strict(version["schema"]["openAPIV3Schema"])
    raise ConfigError(f"{crd_dir}/{name} has no v1 version; use the CRDs of KubeRay >= 1.0")


@functools.lru_cache(maxsize=1)
def launcher_schema() -> dict:
    """``ray/autoscaler/ray-schema.json`` of the installed Ray (found without importing ray)."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("Ray is not installed, so its cluster-launcher schema (ray-schema.json) is "
                          "missing; install the project (`make setup`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI schema where objects with ``properties`` reject unknown keys (as the API
    server does with strict field validation), unless they keep unknown fields on purpose."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)
    visit(schema)
    return schema


# --------------------------------------------------------------------------- reading
def load_documents(path: str | os.PathLike) -> list[dict]:
    """The YAML documents of a manifest file (empty ones skipped); ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"manifest {str(p)!r} does not exist; pass a file such as cluster/kuberay/rayjob.yaml")
    try:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: document {i + 1} is a {type(d).__name__}, not a mapping; a manifest "
                              "document starts with apiVersion:/kind: (KubeRay) or cluster_name: (ray up)")
    if not docs:
        raise ConfigError(f"{p}: the file has no YAML document")
    return docs


def kind_of(doc: dict) -> str | None:
    if "kind" in doc:
        return str(doc["kind"])
    if "cluster_name" in doc or "provider" in doc:
        return LAUNCHER
    return None


def describe(doc: dict) -> str:
    kind = kind_of(doc)
    if kind == LAUNCHER:
        return f"cluster-launcher config {doc.get('cluster_name', '?')!r}"
    return f"{kind} {(doc.get('metadata') or {}).get('name', '?')!r}"


# --------------------------------------------------------------------------- helpers
def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = str(key)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
        key = f'"{key}"'
    return f"{path}.{key}" if path else key


def walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, value) below ``obj``, containers included, depth first."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, _join(path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, _join(path, i))


def cluster_spec(doc: dict) -> tuple[str, dict] | None:
    """The RayClusterSpec inside a KubeRay document, with its path."""
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return None
    key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}.get(kind_of(doc), "")
    if key is None:
        return "spec", spec
    if key and isinstance(spec.get(key), dict):
        return f"spec.{key}", spec[key]
    return None


def groups(doc: dict) -> Iterator[tuple[str, str, dict]]:
    """(path, group name, group spec) of the head group and each worker group."""
    found = cluster_spec(doc)
    if not found:
        return
    path, spec = found
    if isinstance(spec.get("headGroupSpec"), dict):
        yield f"{path}.headGroupSpec", "headgroup", spec["headGroupSpec"]
    for i, g in enumerate(spec.get("workerGroupSpecs") or []):
        if isinstance(g, dict):
            yield f"{path}.workerGroupSpecs[{i}]", str(g.get("groupName", i)), g


def _version(text: str) -> tuple[int, ...] | None:
    m = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    return tuple(int(x or 0) for x in m.groups()) if m else None


# --------------------------------------------------------------------------- schema check
def schema_findings(doc: dict, schema: dict) -> list[Finding]:
    import jsonschema
    validator = jsonschema.Draft7Validator(schema)
    out = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        path = ""
        for part in e.absolute_path:
            path = _join(path, part)
        if e.validator == "additionalProperties" and e.validator_value is False and isinstance(e.instance, dict):
            known = sorted((e.schema.get("properties") or {}).keys())
            patterns = list((e.schema.get("patternProperties") or {}).keys())
            for key in e.instance:
                if key in known or any(re.search(pat, str(key)) for pat in patterns):
                    continue
                guess = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {guess[0]!r}?" if guess else (
                    f"known keys here: {', '.join(known)}" if known else "remove it")
                out.append((_join(path, key), f"unknown field (the schema does not have it); {hint}"))
            continue
        msg = e.message
        if e.validator == "anyOf" and e.context:      # int-or-string and similar: say the first reason
            msg = f"{e.instance!r} is not valid: {e.context[0].message}"
        out.append((path, msg))
    return out


# --------------------------------------------------------------------------- KubeRay rules
def rule_rayjob_cluster(doc: dict) -> list[Finding]:
    """A RayJob says where it runs: a cluster of its own (rayClusterSpec) or a running one."""
    if kind_of(doc) != "RayJob" or not isinstance(doc.get("spec"), dict):
        return []
    spec = doc["spec"]
    has_spec, selector = spec.get("rayClusterSpec") is not None, spec.get("clusterSelector")
    if has_spec and selector:
        return [("spec.clusterSelector", "is set and so is spec.rayClusterSpec; KubeRay then submits the job to "
                         "the selected cluster and ignores rayClusterSpec. Keep one: rayClusterSpec to create a "
                         "cluster for this job, or clusterSelector: {ray.io/cluster: NAME} to use a running one")]
    if not has_spec and not selector:
        return [("spec", "neither rayClusterSpec nor clusterSelector is set; KubeRay rejects the RayJob "
                         "(\"one of RayClusterSpec or ClusterSelector must be set\"). Add rayClusterSpec (a cluster "
                         "created for this job) or clusterSelector: {ray.io/cluster: NAME} (a running RayCluster)")]
    if selector and not (isinstance(selector, dict) and selector.get("ray.io/cluster")):
        return [("spec.clusterSelector", "has no ray.io/cluster entry; KubeRay finds the cluster by that key: "
                                         "clusterSelector: {ray.io/cluster: NAME}")]
    return []


def rule_ray_start_params(doc: dict) -> list[Finding]:
    """Every rayStartParams value is a string: KubeRay renders them into `ray start` flags."""
    out = []
    for path, value in walk(doc):
        if not path.endswith("rayStartParams") or not isinstance(value, dict):
            continue
        for key, v in value.items():
            if isinstance(v, str):
                continue
            text = json.dumps(v) if isinstance(v, (dict, list)) else str(v).lower() if isinstance(v, bool) else str(v)
            out.append((_join(path, key), f"is {v!r} ({type(v).__name__}); every rayStartParams value must be a "
                                          f"string (KubeRay turns them into `ray start --{key}=...` flags): write "
                                          f"{key}: {json.dumps(text)}"))
    return out


def rule_groups(doc: dict) -> list[Finding]:
    """Resources in rayStartParams or in the group's resources, not both; no rayStartParams labels."""
    out = []
    for path, name, g in groups(doc):
        params = g.get("rayStartParams") if isinstance(g.get("rayStartParams"), dict) else {}
        set_in_params = [k for k in ("num-cpus", "num-gpus", "memory", "resources") if params.get(k) not in (None, "")]
        if set_in_params and g.get("resources"):
            out.append((f"{path}.resources", f"group {name} sets resources both here and in rayStartParams "
                                             f"({', '.join(set_in_params)}); KubeRay rejects that: use only one"))
        if "labels" in params:
            out.append((f"{path}.rayStartParams.labels", f"is not supported for group {name}; use the group's "
                                                         "top-level labels: field instead"))
    return out


def rule_auth(doc: dict) -> list[Finding]:
    """Token auth (authOptions.mode: token) needs rayVersion >= 2.52.0; K8s-delegated auth is only
    for a standalone RayCluster."""
    found = cluster_spec(doc)
    if not found:
        return []
    path, spec = found
    auth = spec.get("authOptions") or {}
    if not isinstance(auth, dict):
        return []
    out = []
    if auth.get("mode") == "token":
        version = _version(spec.get("rayVersion", ""))
        if version is None:
            out.append((f"{path}.rayVersion", "authOptions.mode is 'token' but rayVersion is missing or not a "
                                              "version; KubeRay needs it (>= 2.52.0): set rayVersion: \"2.60.0\" "
                                              "(the Ray of the image)"))
        elif version < MIN_TOKEN_AUTH_RAY:
            out.append((f"{path}.rayVersion", f"is {spec['rayVersion']!r}; token auth needs Ray >= 2.52.0: use "
                                              "an image and rayVersion of Ray >= 2.52.0"))
    if auth.get("enableK8sTokenAuth") and kind_of(doc) in ("RayJob", "RayService"):
        out.append((f"{path}.authOptions.enableK8sTokenAuth", f"is not supported for a {kind_of(doc)}; use "
                                                              "mode: token with secretName instead"))
    return out


def rule_serve_config(doc: dict) -> list[Finding]:
    """serveConfigV2 is a YAML string (a block scalar, `|`) that Ray Serve accepts."""
    if kind_of(doc) != "RayService" or not isinstance(doc.get("spec"), dict):
        return []
    text = doc["spec"].get("serveConfigV2")
    path = "spec.serveConfigV2"
    if text is None:
        return []
    if not isinstance(text, str):
        return [(path, "must be a string holding the Serve config YAML (write serveConfigV2: | and indent the "
                       "config below it), not a nested mapping")]
    try:
        serve_doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} of the block" if mark else ""
        return [(path, f"is not valid YAML{where}: {getattr(e, 'problem', e)}; fix the indentation inside the | block")]
    if not isinstance(serve_doc, dict):
        return [(path, "must hold a mapping (applications: [...]); write what `mlops-ray serve build` writes")]
    return serve_findings(serve_doc, path)


def serve_findings(serve_doc: dict, path: str) -> list[Finding]:
    """Ray Serve's own schema, then each mlops-ray application's ``args.config`` as a pipeline config."""
    from ray.serve.schema import ServeDeploySchema
    out = []
    try:
        ServeDeploySchema.model_validate(serve_doc)
    except ValidationError as e:
        for err in e.errors():
            where = path
            for part in err["loc"]:
                where = _join(where, part)
            msg = err["msg"].removeprefix("Value error, ")
            out.append((where, f"{msg} (Ray Serve's ServeDeploySchema; `serve build` writes a valid one)"))
    for i, app in enumerate(serve_doc.get("applications") or []):
        if not isinstance(app, dict) or app.get("import_path") != SERVE_IMPORT_PATH:
            continue
        where = f"{path}.applications[{i}].args.config"
        config = (app.get("args") or {}).get("config")
        if not isinstance(config, dict):
            out.append((where, f"is missing; {SERVE_IMPORT_PATH} needs the pipeline config as a mapping here "
                               "(what `mlops-ray serve build CONFIG` writes)"))
            continue
        try:
            config_from_dict(config, where)
        except ConfigError as e:
            out.append((where, f"is not a valid pipeline config: {e.message}"))
    return out


def rule_runtime_env_yaml(doc: dict) -> list[Finding]:
    """KubeRay unmarshals runtimeEnvYAML into a runtime_env mapping before it submits the job."""
    spec = doc.get("spec")
    if kind_of(doc) != "RayJob" or not isinstance(spec, dict) or spec.get("runtimeEnvYAML") is None:
        return []
    text, path = spec["runtimeEnvYAML"], "spec.runtimeEnvYAML"
    if not isinstance(text, str):
        return [(path, "must be a string holding YAML (write runtimeEnvYAML: | and the runtime_env below it)")]
    try:
        env = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [(path, f"is not valid YAML: {getattr(e, 'problem', e)}; fix the indentation inside the | block")]
    if not isinstance(env, dict):
        return [(path, "must hold a mapping (pip:, working_dir:, env_vars:, ...)")]
    return []


# --------------------------------------------------------------------------- ray up rules
def rule_launcher(doc: dict) -> list[Finding]:
    """What `ray up` checks once it has filled in its defaults (ray.autoscaler._private.util.validate_config)."""
    if kind_of(doc) != LAUNCHER:
        return []
    types = doc.get("available_node_types")
    if not isinstance(types, dict):
        return []
    out = []
    head = doc.get("head_node_type")
    if head is None:
        out.append(("head_node_type", f"is missing; name the head's node type, one of: {', '.join(types)}"))
    elif head not in types:
        out.append(("head_node_type", f"is {head!r}, which is not one of available_node_types ({', '.join(types)})"))
    total = sum(int((t or {}).get("min_workers", 0)) for t in types.values() if isinstance(t, dict))
    max_workers = doc.get("max_workers", 2)
    if isinstance(max_workers, int) and total > max_workers:
        out.append(("max_workers", f"is {max_workers} but the node types' min_workers add up to {total}; raise "
                                   "max_workers or lower min_workers"))
    return out


# --------------------------------------------------------------------------- project rules
_SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|SECRET|ACCESS_KEY|API_KEY)", re.I)
_INLINE_TOKEN = re.compile(r"\b(RAY_AUTH_TOKEN|AWS_SECRET_ACCESS_KEY|MLFLOW_TRACKING_PASSWORD)=(?![\"']?\$)(\S+)")


def _secret_name(name: Any) -> bool:
    """TOKEN, PASSWORD, ... in an environment variable's name; not ..._PATH / ..._FILE (a file's path)."""
    return bool(_SECRET_NAME.search(str(name))) and not re.search(r"_(PATH|FILE|DIR)$", str(name), re.I)


def embedded_documents(doc: dict) -> Iterator[tuple[str, Any]]:
    """(path, parsed value) of the YAML strings KubeRay parses: serveConfigV2, runtimeEnvYAML."""
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    for key in ("serveConfigV2", "runtimeEnvYAML"):
        if isinstance(spec.get(key), str):
            try:
                yield f"spec.{key}", yaml.safe_load(spec[key])
            except yaml.YAMLError:
                continue                    # reported by rule_serve_config / rule_runtime_env_yaml


def rule_secrets(doc: dict) -> list[Finding]:
    """Secrets come from a Secret reference (valueFrom.secretKeyRef, authOptions.secretName) or a
    file on the node, never as a literal in the manifest (nor in the YAML it embeds)."""
    out = []
    if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
        out.append(("data" if doc.get("data") else "stringData",
                    "a Secret with its value does not belong in a committed manifest; create it on the cluster: "
                    "kubectl create secret generic NAME --from-literal=auth_token=\"$(openssl rand -hex 32)\""))
    items = list(walk(doc))
    for prefix, inner in embedded_documents(doc):
        items += list(walk(inner, prefix))
    for path, value in items:
        if isinstance(value, dict) and "name" in value and "value" in value and _secret_name(value["name"]):
            if value["value"] not in (None, ""):
                out.append((f"{path}.value", f"{value['name']} is set inline; reference a Secret instead: valueFrom: "
                                             "{secretKeyRef: {name: SECRET, key: KEY}}"))
        elif isinstance(value, dict) and "env_vars" in value and isinstance(value["env_vars"], dict):
            for k, v in value["env_vars"].items():
                if _secret_name(k) and v not in (None, ""):
                    out.append((_join(f"{path}.env_vars", k), "a secret in a runtime_env is stored in the GCS and "
                                                              "shown by the dashboard; give it to the pods from a "
                                                              "Secret (valueFrom.secretKeyRef) instead"))
        elif isinstance(value, str):
            m = _INLINE_TOKEN.search(value)
            if m:
                out.append((path, f"sets {m.group(1)} to a literal; read it from a file or a Secret instead "
                                  f"(e.g. RAY_AUTH_TOKEN_PATH=~/.ray/auth_token, or valueFrom.secretKeyRef)"))
    return out


# relative paths ending in .yaml/.yml inside a string: `mlops-ray run configs/x.yaml --set ...`;
# skipped: absolute paths (the image's own files), ~/ and $VAR paths, URLs
_CONFIG_REF = re.compile(r"(?<![\w/.~$:@-])((?:\.{1,2}/)?[\w.-]+(?:/[\w.-]+)*\.ya?ml)(?![\w/.-])")


def config_refs(doc: dict) -> Iterator[tuple[str, str]]:
    """(field path, relative path) of every config file a document references. Strings that are YAML
    documents themselves (serveConfigV2, runtimeEnvYAML) are searched too, as raw text."""
    for path, value in walk(doc):
        if isinstance(value, str):
            for m in _CONFIG_REF.finditer(value):
                if "://" not in value[max(0, m.start() - 12):m.start()]:
                    yield path, m.group(1)
    if kind_of(doc) == LAUNCHER and isinstance(doc.get("file_mounts"), dict):
        for remote, local in doc["file_mounts"].items():      # local sources that `ray up` copies
            if isinstance(local, str) and not local.startswith(("/", "~", "$")) and "://" not in local:
                yield _join("file_mounts", remote), local


def rule_config_refs(doc: dict, root: Path, file: str = "the manifest") -> list[Finding]:
    out, seen = [], set()
    for path, ref in config_refs(doc):
        if (path, ref) in seen or (root / ref).exists():
            continue
        seen.add((path, ref))
        out.append((path, f"references {ref!r}, which does not exist under the project root {root} (looked for "
                          f"{root / ref}). Fix the path in {file}, or add the file to the project (e.g. start from "
                          f"configs/quickstart.yaml) so the cluster's working_dir or image carries it"))
    return out


KUBERAY_RULES = (rule_rayjob_cluster, rule_ray_start_params, rule_groups, rule_auth, rule_serve_config,
                 rule_runtime_env_yaml)


# --------------------------------------------------------------------------- one document, files
def check_document(doc: dict, *, file: str, root: Path, crd_dir: Path | None = None) -> list[Problem]:
    """Every problem of one parsed document: schema, then the rules; a rule's finding replaces the
    schema's about the same field (the rule's message says the fix)."""
    kind = kind_of(doc)
    rules: list[Finding] = []
    schema: list[Finding] = []
    if kind in KINDS:
        if doc.get("apiVersion") != "ray.io/v1":
            rules.append(("apiVersion", f"is {doc.get('apiVersion')!r}; these manifests are checked against "
                                        "KubeRay's v1 API: write apiVersion: ray.io/v1"))
        schema = schema_findings(doc, crd_schema(kind, str(crd_dir or default_crd_dir())))
        for rule in KUBERAY_RULES:
            rules += rule(doc)
    elif kind == LAUNCHER:
        schema = schema_findings(doc, launcher_schema())
        rules += rule_launcher(doc)
    elif kind == "Secret":
        pass
    else:
        return [Problem(file, "kind", f"{kind!r} is not a kind this checker knows; it checks RayCluster, RayJob, "
                                      "RayService (apiVersion: ray.io/v1) and cluster-launcher configs (cluster_name:, "
                                      "provider:)")]
    rules += rule_secrets(doc)
    rules += rule_config_refs(doc, root, file)
    covered = {p for p, _ in rules}
    schema = [(p, m) for p, m in schema if p not in covered]
    return [Problem(file, p, m) for p, m in schema + rules]


def check_file(path: str | os.PathLike, *, root: Path | None = None,
               crd_dir: Path | None = None) -> tuple[list[str], list[Problem]]:
    """(a description of each document, every problem) of one manifest file."""
    docs = load_documents(path)
    root = root or project_root(path)
    problems: list[Problem] = []
    for i, doc in enumerate(docs):
        name = str(path) if len(docs) == 1 else f"{path} (document {i + 1})"
        problems += check_document(doc, file=name, root=root, crd_dir=crd_dir)
    return [describe(d) for d in docs], problems


def check_files(paths: list[str], *, root: str | os.PathLike | None = None,
                crd_dir: str | os.PathLike | None = None) -> list[dict]:
    """Check each file; raise one ConfigError listing every problem, else return a summary per file."""
    if not paths:
        raise ConfigError("give at least one manifest, e.g. mlops-ray cluster check cluster/kuberay/*.yaml")
    summaries, problems = [], []
    for p in paths:
        docs, found = check_file(p, root=Path(root).resolve() if root else None,
                                 crd_dir=Path(crd_dir) if crd_dir else None)
        problems += found
        summaries.append({"file": str(p), "documents": docs, "problems": len(found)})
    if problems:
        n = len(problems)
        raise ConfigError(f"{n} problem{'s' if n != 1 else ''} in the manifests:\n" +
                          "\n".join(f"  {pr}" for pr in problems),
                          details={"problems": [vars(pr) for pr in problems]})
    return summaries
