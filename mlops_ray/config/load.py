"""Loading a config: YAML file, ``--set`` overrides, ``${ENV}`` references, literal secrets.

In: a YAML file's path and the CLI's ``--set key=value`` overrides (``load_config``), or a mapping
(``config_from_dict``). Out: a validated, frozen ``Config`` that remembers which values were
``${ENV}`` references, so what it hands to other processes carries the reference and never the
secret; bad input raises ``ConfigError`` worded by ``messages.py``. ``literal_secrets`` names the
credentials written into a config itself.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlops_ray.config.messages import Override, format_errors, not_a_section
from mlops_ray.config.models import Config
from mlops_ray.errors import ConfigError


log = logging.getLogger(__name__)

# keys that are read nowhere any more -> why; a config that still sets one loads, with a message
REMOVED = {("monitor", "ks_pvalue"): "drift thresholds are calibrated per field (monitor.method, monitor.alpha)"}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
SECRET_NAME = re.compile(r"(secret|token|password|passwd|credential|private|api_?key|access_?key)", re.I)


def _expand_env(node: Any, path: str, refs: dict[str, str], source: str) -> Any:
    """``${NAME}`` / ``${NAME:-default}`` in any string value, from the environment. The references
    are remembered (``refs``: key path -> the string as written) so that what the config hands to
    Serve or writes into YAML carries the reference, never the secret."""
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), refs, source) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]", refs, source) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        def sub(m: re.Match) -> str:
            value = os.environ.get(m.group(1), m.group(2))
            if value is None:
                raise ConfigError(f"{source}: {path} refers to ${{{m.group(1)}}}, which is not set in the "
                                  f"environment; export {m.group(1)}=... (or write ${{{m.group(1)}:-default}})")
            return value
        refs[path] = node
        return _ENV_REF.sub(sub, node)
    return node


def literal_secrets(cfg: Config) -> list[str]:
    """Key paths whose values look like credentials written into the config itself (not as
    ``${ENV}`` references): env vars named like secrets, URIs with a password or secret key."""
    refs = cfg.env_refs()
    found = []
    env_vars = ((cfg.ray.runtime_env or {}).get("env_vars") or {})
    for k in env_vars:
        path = f"ray.runtime_env.env_vars.{k}"
        if SECRET_NAME.search(str(k)) and path not in refs:
            found.append(path)
    for path, value in (("registry.tracking_uri", cfg.registry.tracking_uri), ("store", cfg.store)):
        if value and path not in refs and (re.search(r"://[^/@\s]+:[^/@\s]+@", value)
                                           or re.search(r"(secret_key|access_key|session_token)=", value)):
            found.append(path)
    return found


def config_from_dict(raw: Any, source: str = "config") -> Config:
    """Validate a config given as a mapping (a Serve replica's arguments, a test's dict); ``source``
    names it in messages."""
    return _validate(raw, source, ())


def _validate(raw: Any, source: str, overrides: tuple[Override, ...]) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (name:, data:, ...), "
                          f"got {type(raw).__name__}")
    refs: dict[str, str] = {}
    expanded = _expand_env(raw, "", refs, source)
    _drop_removed(expanded, source, overrides)
    try:
        cfg = Config.model_validate(expanded)
    except ValidationError as e:
        raise ConfigError(format_errors(e, expanded, source, overrides)) from None
    object.__setattr__(cfg, "_env_refs", refs)
    return cfg


def _drop_removed(raw: dict, source: str, overrides: tuple[Override, ...]) -> None:
    """Take the keys ``REMOVED`` lists out of ``raw``, saying so on the log (stderr in the CLI):
    existing configs keep working and learn which line to delete."""
    for path, why in REMOVED.items():
        node = raw
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            del node[path[-1]]
            o = next((o for o in overrides if o.path == path), None)
            where, fix = (o.flag, "drop the --set") if o else (source, "delete the line")
            log.warning("%s: %s is ignored since %s; %s", where, ".".join(path), why, fix)


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> Config:
    """Read a YAML pipeline spec and return a validated, frozen ``Config``.

    ``overrides`` maps dotted key paths to values (``{"tune.num_samples": 4}``) applied
    before validation, so they are checked like the file itself; their problems are reported
    as the ``--set key=value`` they came from, not as the file's.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass the path of a YAML spec "
                          "such as configs/quickstart.yaml")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raise ConfigError(f"{p}: the file is empty; start from configs/quickstart.yaml")
    applied = []
    for key, value in (overrides or {}).items() if isinstance(raw, dict) else ():
        applied.append(_set_path(raw, tuple(key.split(".")), value))
    if isinstance(raw, dict) and isinstance(raw.get("store", ".mlops"), str) and "://" not in raw.get("store", ""):
        # absolute now: a serving head, a Ray job or a replica does not share this process's cwd
        raw["store"] = os.path.abspath(os.path.expanduser(raw.get("store", ".mlops")))
    return _validate(raw, str(p), tuple(applied))


def _set_path(d: dict, path: tuple[str, ...], value: Any) -> Override:
    """Set ``value`` at ``path`` (an empty section of the file counts as {}); the override, for messages."""
    root = None
    for i, part in enumerate(path[:-1]):
        if d.get(part) is None:
            root = root or path[:i + 1]
            d[part] = {}
        elif not isinstance(d[part], dict):
            raise ConfigError(not_a_section(path, value, path[:i + 1], d[part]))
        d = d[part]
    if path[-1] not in d:
        root = root or path
    d[path[-1]] = value
    return Override(path, value, root or path)
