"""The store catalog: every location a pipeline keeps in the store, named once.

In: the store (a ``Store`` or its root, a local directory or an object-store URI) and the
pipeline's name. Out: paths (``Store.path``: what the store's own pyarrow filesystem opens) or,
with ``uri=True``, URIs that Ray workers and other processes can open (``Store.uri``).

No other module builds a store path from a literal: to change the layout, change it here (and
the table in docs/architecture.md). ``{store}/{name}/`` holds:

=====================================  ================================================================
``data/{key}/``                        one prepared data set (``key``: the input fingerprint and the
                                       config sections that shaped it): ``features/split=*``,
                                       ``test_raw/``, ``feature_spec.json``, ``validation.json``,
                                       ``source.json``, ``reference_inputs.json``,
                                       ``train_keys.parquet``, and ``_SUCCESS`` written last
``runs/{train key}/``                  one search and fit: ``tune/`` (Tune's storage); per attempt
                                       ``search-a{n}.json``, the refitted model ``model-a{n}.ubj``
                                       with ``threshold-a{n}.json``, ``evaluation-a{n}.json`` (+
                                       ``.parquet``: the test scores) and ``gate-a{n}.json``;
                                       ``registered.json``
``serving/``                           ``state.json`` (+ ``.lock``), ``stats/`` per replica,
                                       ``spool/`` (local stores), ``head.json`` (local stores)
``predlog/``                           the prediction log (hourly Parquet parts)
``labels/``                            ``labels-{stamp}.parquet`` files from ``feedback``
``monitor/``                           ``latest.json``, ``reports/{stamp}.json``,
                                       ``reference/v{n}.json``, ``decisions.jsonl``, ``loop.lock``
``retrain/{key}/``                     a retrain's training window (``data/``)
``thresholds/v{n}.json``               a version's decision-threshold history
=====================================  ================================================================

Beside the pipelines, a local store holds the registry's SQLite tracking store (``mlflow.db``),
its artifacts (``mlartifacts/``) and the bundle cache (``registry_cache/``).
"""
from __future__ import annotations

import os
import tempfile
import zlib

from mlops_ray.storage.store import Store


class Catalog:
    """The locations of pipeline ``name`` in ``store``."""

    def __init__(self, store: Store | str, name: str):
        self.store = store if isinstance(store, Store) else Store(store)
        self.name = name

    def _at(self, parts: tuple[str, ...], uri: bool) -> str:
        return self.store.uri(self.name, *parts) if uri else self.store.path(self.name, *parts)

    # ------------------------------------------------------------------ data/{key}
    def data_dir(self, key: str, *, uri: bool = False) -> str:
        return self._at(("data", key), uri)

    def features_dir(self, key: str, *, uri: bool = False) -> str:
        """The featurized splits, one ``split=train|valid|test`` folder each."""
        return self._at(("data", key, "features"), uri)

    def features_split(self, key: str, split: str, *, uri: bool = False) -> str:
        return self._at(("data", key, "features", f"split={split}"), uri)

    def test_raw_dir(self, key: str, *, uri: bool = False) -> str:
        """The test split's raw rows, as ingest read them: evaluate scores these, never the source."""
        return self._at(("data", key, "test_raw"), uri)

    def feature_spec(self, key: str) -> str:
        return self._at(("data", key, "feature_spec.json"), False)

    def validation(self, key: str) -> str:
        return self._at(("data", key, "validation.json"), False)

    def source_record(self, key: str) -> str:
        return self._at(("data", key, "source.json"), False)

    def reference_inputs(self, key: str) -> str:
        return self._at(("data", key, "reference_inputs.json"), False)

    def train_keys(self, key: str) -> str:
        """Row keys of the training split, for the gate's champion-overlap check."""
        return self._at(("data", key, "train_keys.parquet"), False)

    def data_done(self, key: str) -> str:
        """Written last: a data set without it is incomplete and is rebuilt."""
        return self._at(("data", key, "_SUCCESS"), False)

    # ------------------------------------------------------------------ runs/{train key}
    def tune_dir(self, train_key: str) -> str:
        """Tune's storage for the run's searches (a URI: trials write to it)."""
        return self._at(("runs", train_key, "tune"), True)

    def search_record(self, train_key: str, experiment: str) -> str:
        return self._at(("runs", train_key, f"{experiment}.json"), False)

    def model_record(self, train_key: str, attempt: int) -> str:
        """The refitted model of a search attempt (XGBoost's UBJSON), for ``--only`` steps after it."""
        return self._at(("runs", train_key, f"model-a{attempt}.ubj"), False)

    def threshold_record(self, train_key: str, attempt: int) -> str:
        return self._at(("runs", train_key, f"threshold-a{attempt}.json"), False)

    def evaluation_record(self, train_key: str, attempt: int) -> str:
        return self._at(("runs", train_key, f"evaluation-a{attempt}.json"), False)

    def evaluation_scores(self, train_key: str, attempt: int) -> str:
        return self._at(("runs", train_key, f"evaluation-a{attempt}.parquet"), False)

    def gate_record(self, train_key: str, attempt: int) -> str:
        return self._at(("runs", train_key, f"gate-a{attempt}.json"), False)

    def registered_record(self, train_key: str) -> str:
        return self._at(("runs", train_key, "registered.json"), False)

    # ------------------------------------------------------------------ serving/
    def serving_dir(self) -> str:
        return self._at(("serving",), True)

    def serving_state(self) -> str:
        return self._at(("serving", "state.json"), True)

    def replica_stats_dir(self) -> str:
        """Per-replica statistics snapshots (one JSON per replica, rewritten every second)."""
        return self._at(("serving", "stats"), True)

    def spool_dir(self) -> str:
        """Where replicas spool prediction-log records before Parquet: always a local directory. In
        the store's serving directory when the store is a path; in /tmp on the replica's node for
        object stores (a lost node loses at most its unflushed interval, see monitor/predlog/writer.py)."""
        d = self.serving_dir()
        if "://" not in d:
            return os.path.join(d, "spool")
        return os.path.join(tempfile.gettempdir(), "mlops-ray-spool", f"{zlib.crc32(d.encode()):08x}")

    def head_record(self) -> str:
        """The local serving head's pid and address: a fact about this machine, so a local file even
        when the store is an object store (then under ~/.cache/mlops-ray/heads/, keyed by the store)."""
        root = self.store.root_uri
        if "://" not in root:
            return self._at(("serving", "head.json"), False)
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return os.path.join(base, "mlops-ray", "heads", f"{zlib.crc32(root.encode()):08x}", self.name, "head.json")

    # ------------------------------------------------------------------ predlog/, labels/
    def predlog_dir(self) -> str:
        return self._at(("predlog",), True)

    def labels_dir(self) -> str:
        return self._at(("labels",), True)

    def labels_file(self, stamp: str) -> str:
        return self._at(("labels", f"labels-{stamp}.parquet"), False)

    # ------------------------------------------------------------------ monitor/
    def monitor_dir(self) -> str:
        return self._at(("monitor",), False)

    def latest_report(self) -> str:
        return self._at(("monitor", "latest.json"), False)

    def reports_dir(self) -> str:
        return self._at(("monitor", "reports"), False)

    def report(self, stamp: str, *, uri: bool = False) -> str:
        return self._at(("monitor", "reports", f"{stamp}.json"), uri)

    def reference_profile(self, version: str | int) -> str:
        return self._at(("monitor", "reference", f"v{version}.json"), False)

    def decisions(self) -> str:
        return self._at(("monitor", "decisions.jsonl"), False)

    def loop_lock(self) -> str:
        return self._at(("monitor", "loop.lock"), False)

    # ------------------------------------------------------------------ retrain/, thresholds/
    def retrain_dir(self, key: str) -> str:
        return self._at(("retrain", key), False)

    def retrain_data(self, key: str) -> str:
        return self._at(("retrain", key, "data"), True)

    def thresholds(self, version: str | int) -> str:
        return self._at(("thresholds", f"v{version}.json"), False)


# ---------------------------------------------------------------------- beside the pipelines
def tracking_db(local_store: str) -> str:
    """The default SQLite tracking store of a local store."""
    return os.path.join(local_store, "mlflow.db")


def artifacts_dir(local_store: str) -> str:
    return os.path.join(local_store, "mlartifacts")


def bundle_cache_dir(local_store: str | None) -> str:
    """Downloaded bundles: in the store when it is local, else in the machine's temp directory."""
    if local_store:
        return os.path.join(local_store, "registry_cache")
    return os.path.join(tempfile.gettempdir(), "mlops-ray-registry-cache")
