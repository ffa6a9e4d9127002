"""Shared fixtures. Tiers by directory: unit/ (no Ray), ray/ (one local Ray for the whole
session), e2e/ (subprocesses that start their own Ray; slow)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_ray.config import config_from_dict

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def in_ci() -> bool:
    """CI=true (set by CI services and by .ci/run): the machine .ci/run prepared."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> None:
    """A component or condition this test needs is absent: a skip on a developer's machine, a
    failure in CI, where .ci/run installs every such component (so a green run means it ran)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run provides this, so the test fails instead of skipping)",
                    pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = str(item.fspath)
        if f"{os.sep}unit{os.sep}" in path:
            item.add_marker(pytest.mark.unit)
        elif f"{os.sep}ray{os.sep}" in path:
            item.add_marker(pytest.mark.ray)
        elif f"{os.sep}e2e{os.sep}" in path:
            item.add_marker(pytest.mark.slow)


def base_raw(source: str, **sections) -> dict:
    raw = {"name": "t", "data": {"source": source, "label": "is_fraud", "id_column": "transaction_id",
                                 "time_column": "event_time"}}
    for k, v in sections.items():
        if k == "data":
            raw["data"].update(v)
        else:
            raw[k] = v
    return raw


def config_file(path: Path, store: Path):
    """A pipeline YAML at ``path`` (the base config, store ``store``), its Config and its Registry:
    what CLI tests invoke and then look at."""
    import yaml

    from mlops_ray.registry import Registry
    raw = base_raw("unused")
    raw["store"] = str(store)
    path.write_text(yaml.safe_dump(raw))
    cfg = make_config("unused", store=str(store))
    return path, cfg, Registry(cfg.registry, cfg.store, cfg.name)


def make_config(source: str, store: str | None = None, **sections):
    raw = base_raw(source, **sections)
    if store:
        raw["store"] = store
    return config_from_dict(raw)


@pytest.fixture(scope="session")
def small_df() -> pd.DataFrame:
    from mlops_ray.data.synth import SynthSpec, generate_chunk
    return generate_chunk(SynthSpec(rows=4000, seed=3), 0, 4000)


def write_parquet(df: pd.DataFrame, path: Path, parts: int = 1) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    n = len(df)
    step = -(-n // parts)
    for i in range(parts):
        pq.write_table(pa.Table.from_pandas(df.iloc[i * step:(i + 1) * step], preserve_index=False),
                       path / f"part-{i:03d}.parquet")
    return path


@pytest.fixture
def parquet_dir(small_df, tmp_path) -> Path:
    return write_parquet(small_df, tmp_path / "data", parts=2)


def make_bundle(df: pd.DataFrame, path: Path, rounds: int = 20, metadata: dict | None = None, **features) -> str:
    """A real model bundle (FeatureSpec fitted on ``df``, XGBoost trained on it) at ``path``."""
    import numpy as np
    import xgboost as xgb

    from mlops_ray.registry import bundle
    from mlops_ray.data import features as feat
    from mlops_ray.data.profile import profile_local
    from mlops_ray.monitor.reference import build_reference

    cfg = make_config("x", features={"min_frequency": 2, **features})
    table = pa.Table.from_pandas(df, preserve_index=False)
    roles = feat.assign_roles(table.schema, cfg.data, cfg.features)
    parts = profile_local(table, {"f": lambda t: feat.fit_partial(t, roles, cfg.features)})["f"]
    spec = feat.fit_merge(parts, roles, cfg.data, cfg.features)
    X = feat.transform(df, spec).to_numpy(np.float32)
    d = bundle.dmatrix(X, spec, label=df["is_fraud"].to_numpy())
    bst = xgb.train({"objective": "binary:logistic", "max_depth": 4, "max_cat_to_onehot": 8, "nthread": 1}, d, rounds)
    ref = build_reference(X, spec, bst.inplace_predict(X), "binary")
    return bundle.write_bundle(str(path), bst, spec, ref, {"task": "binary", **(metadata or {})})


@pytest.fixture(scope="session")
def bundle_dir(small_df, tmp_path_factory) -> str:
    """One real bundle per test session (read-only: copy it before changing it)."""
    return make_bundle(small_df, tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture
def not_http_port():
    """A loopback port whose listener answers every connection with bytes that are not HTTP (as
    a Ray gRPC port does when an HTTP client knocks), then hangs up."""
    import socket
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x04\x00\x40\x00\x00\xfe\x01\n\n")
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    srv.close()
