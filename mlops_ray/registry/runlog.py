"""The run log: one MLflow run of a pipeline, and how values are shaped to fit MLflow.

In: a ``Registry`` (its MlflowClient and its error wrapping) and a run it created
(``Registry.start_run``). Out: ``RunLog`` -- params (nested dicts as dotted keys, clipped to
MLflow's limits), metrics (finite numbers only), tags, JSON/text/file/figure artifacts and
finished child runs (one per tuning trial); as a context manager it ends the run FINISHED,
or FAILED with a ``failure_reason`` tag (KILLED on Ctrl-C).

The helpers below (``flatten``, ``mask_uri``, ``mlflow_key``, ``as_text``, ``clip``,
``tag_dict``) make any value a legal MLflow key or value with credentials hidden; the client
uses them for its tags and messages too.

mlflow is imported inside the methods, never here: importing it costs about 1.3 s and
configures logging, and the package is imported by commands that may never reach MLflow.
A RunLog exists only once ``Registry.client`` has imported mlflow with its defaults set.
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
import time

from mlops_ray.errors import RegistryError

# mlflow is imported inside functions (measured import cost, see the module docstring).

_PARAM_LIMIT_FALLBACK = 500            # used if mlflow stops exporting MAX_PARAM_VAL_LENGTH
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


# --------------------------------------------------------------------------- values for MLflow
def mask_uri(text: str) -> str:
    """Hide ``user:password@`` in any URI inside ``text``."""
    return _CREDENTIALS.sub("***@", str(text))


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def mlflow_key(k: str) -> str:
    # MLflow keys: alphanumerics, _ - . space : / ; at most 250 characters
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", str(k))[:250]


def as_text(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=_json_default)
    return str(v)


def clip(s: str, limit: int) -> str:
    return s if len(s) <= limit else s[:limit - 3] + "..."


def tag_dict(tags: dict | None) -> dict[str, str]:
    """Tags as MLflow takes them: legal keys, masked text values clipped to its limit, None dropped."""
    try:
        from mlflow.utils.validation import MAX_TAG_VAL_LENGTH as limit
    except ImportError:
        limit = 5000
    return {mlflow_key(k): clip(mask_uri(as_text(v)), limit) for k, v in (tags or {}).items() if v is not None}


def _json_default(o):
    if hasattr(o, "tolist"):                                  # numpy scalars and arrays
        return o.tolist()
    return str(o)


# --------------------------------------------------------------------------- runs
class RunLog:
    """One MLflow run. A context manager: FAILED (tag failure_reason) on exception, else FINISHED.

    ``registry`` is the ``Registry`` that created the run: its client and its ``_errors`` wrapping.
    """

    def __init__(self, registry, run_id: str, artifact_uri: str, experiment_id: str):
        self.registry = registry
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        self.experiment_id = experiment_id
        self.status: str | None = None        # set once the run has ended

    def __repr__(self) -> str:
        return f"RunLog(run_id={self.run_id!r}, status={self.status or 'RUNNING'})"

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.end()
            return False
        try:                                  # never hide the original exception behind a logging error
            if issubclass(exc_type, KeyboardInterrupt):
                self.end("KILLED")
            else:
                self.fail(f"{exc_type.__name__}: {exc}")
        except RegistryError as e:
            logging.getLogger(__name__).warning("could not mark run %s as failed: %s", self.run_id, e)
        return False

    def _errors(self, doing: str):
        return self.registry._errors(f"{doing} (run {self.run_id})")

    def end(self, status: str = "FINISHED") -> None:
        if self.status is not None:
            return
        with self._errors("ending the run"):
            self.registry.client.set_terminated(self.run_id, status)
        self.status = status

    def fail(self, reason: str) -> None:
        """Tag failure_reason and end the run as FAILED."""
        self.set_tags({"failure_reason": reason})
        self.end("FAILED")

    def log_params(self, params: dict) -> None:
        """Nested dicts become dotted keys; values are stringified and clipped to MLflow's limit."""
        from mlflow.entities import Param
        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
        except ImportError:
            limit = _PARAM_LIMIT_FALLBACK
        items = [Param(mlflow_key(k), clip(mask_uri(as_text(v)), limit)) for k, v in flatten(params).items()]
        self._batch(params=items)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Finite numbers only (bools count as 0/1); anything else is skipped."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(mlflow_key(k), float(v), now, step or 0) for k, v in flatten(metrics).items()
                 if isinstance(v, numbers.Real) and math.isfinite(float(v))]
        self._batch(metrics=items)

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag
        self._batch(tags=[RunTag(k, v) for k, v in tag_dict(tags).items()])

    def _batch(self, params=(), metrics=(), tags=(), size: int = 100) -> None:
        client = self.registry.client
        with self._errors("logging to the run"):
            for lst, kw in ((list(params), "params"), (list(metrics), "metrics"), (list(tags), "tags")):
                for i in range(0, len(lst), size):
                    client.log_batch(self.run_id, **{kw: lst[i:i + size]})

    def log_dict(self, obj, name: str) -> None:
        """JSON artifact (numpy values become plain numbers)."""
        self.log_text(json.dumps(obj, indent=1, default=_json_default), name)

    def log_text(self, text: str, name: str) -> None:
        with self._errors(f"logging artifact {name!r}"):
            self.registry.client.log_text(self.run_id, text, name)

    def log_file(self, path: str, artifact_path: str | None = None) -> None:
        with self._errors(f"logging file {path!r}"):
            self.registry.client.log_artifact(self.run_id, path, artifact_path)

    def log_figure(self, fig, name: str) -> None:
        """A matplotlib figure as a PNG artifact; the figure is closed (long-lived loops make many)."""
        if not os.path.splitext(name)[1]:
            name += ".png"
        try:
            with self._errors(f"logging figure {name!r}"):
                self.registry.client.log_figure(self.run_id, fig, name)
        finally:
            import matplotlib.pyplot as plt     # here, not at the top: importing it costs about 0.5 s
            plt.close(fig)

    def child_run(self, name: str, params: dict, metrics: dict, tags: dict | None = None) -> str:
        """A finished nested run (e.g. one tuning trial) under this one; returns its run id."""
        all_tags = {**(tags or {}), "mlflow.parentRunId": self.run_id}
        with self._errors(f"starting child run {name!r}"):
            run = self.registry.client.create_run(self.experiment_id, run_name=name, tags=tag_dict(all_tags))
        with RunLog(self.registry, run.info.run_id, run.info.artifact_uri, self.experiment_id) as child:
            child.log_params(params)
            child.log_metrics(metrics)
        return child.run_id
