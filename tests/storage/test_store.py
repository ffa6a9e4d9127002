"""The storage layer and config hygiene that scale-out relies on: store URIs, the node-local
store rule, ${ENV} references that keep secrets out of Serve's arguments and `serve build` YAML."""
from __future__ import annotations

import pytest
import yaml

from mlops_ray.config import load_config
from mlops_ray.errors import ConfigError
from mlops_ray.storage.store import Store, _why

pytestmark = pytest.mark.unit

BASE = {"name": "p", "data": {"source": "x", "label": "y"}}


def test_store_uri_keeps_the_query_after_the_key():
    s = Store("s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http")
    assert s.uri("p", "serving", "state.json") == \
        "s3://bucket/prefix/p/serving/state.json?endpoint_override=127.0.0.1:9000&scheme=http"
    assert s.path("p", "x") == "bucket/prefix/p/x"


def test_a_relative_store_is_made_absolute_when_the_config_is_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**BASE, "store": "rel/store"}))
    assert load_config("c.yaml").store == str(tmp_path / "rel" / "store")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(BASE))
    assert load_config("d.yaml").store == str(tmp_path / ".mlops")


def test_store_errors_say_what_to_do():
    assert "bucket 'nob' does not exist" in _why("Bucket 'nob' not found.", "s3://nob/x")
    msg = _why("AWS Error ACCESS_DENIED during PutObject operation", "s3://b/x")
    assert "access denied" in msg and "AWS_ACCESS_KEY_ID" in msg


def test_an_unwritable_store_path_fails_before_any_work(tmp_path):
    (tmp_path / "store").write_text("a file where the store directory should be")
    with pytest.raises(ConfigError, match=r"store '.*store' cannot be written: "):
        Store(str(tmp_path / "store")).check_writable("p")


def test_gs_store_errors_say_what_to_do(monkeypatch, tmp_path):
    assert "gcloud storage buckets create gs://nob" in _why("bucket nob does not exist", "gs://nob/x")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("GCE_METADATA_HOST", "metadata.invalid")
    msg = _why("UNAVAILABLE: Could not create a OAuth2 access token to authenticate the request", "gs://b/x")
    assert "no credentials are set" in msg and "GOOGLE_APPLICATION_CREDENTIALS" in msg
    with pytest.raises(ConfigError, match="no Google Cloud credentials are set.*STORAGE_EMULATOR_HOST"):
        Store("gs://b/x").check_writable("p")
    (tmp_path / "application_default_credentials.json").write_text("{}")      # `gcloud auth application-default login`
    from mlops_ray.storage.fs import gcs_credentials_missing
    assert not gcs_credentials_missing()
