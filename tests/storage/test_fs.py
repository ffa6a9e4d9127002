"""storage/fs.py: gs:// URIs get a bounded retry, an emulator, and a clear error for unknown parameters."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def _gcs_options(fs) -> dict:
    return fs.__reduce__()[1][0]          # GcsFileSystem's options, as pickling sends them to Ray workers


def test_a_gs_uri_gets_a_bounded_retry_and_its_parameters(monkeypatch):
    from mlops_ray.storage import fs as sfs
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    sfs._from_uri.cache_clear()
    fs, path = sfs.filesystem_for("gs://b/pre/fix/?project_id=proj&retry_limit_seconds=7")
    assert path == "b/pre/fix"
    o = _gcs_options(fs)
    assert o["project_id"] == "proj" and o["retry_time_limit"].total_seconds() == 7 and not o["anonymous"]
    fs, _ = sfs.filesystem_for("gs://b/x")
    assert _gcs_options(fs)["retry_time_limit"].total_seconds() == sfs.GCS_RETRY_S     # not pyarrow's 15 min


def test_storage_emulator_host_points_gs_at_an_emulator_unauthenticated(monkeypatch):
    from mlops_ray.storage import fs as sfs
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")
    sfs._from_uri.cache_clear()
    try:
        fs, path = sfs.filesystem_for("gs://bucket/store")
        o = _gcs_options(fs)
        assert (o["anonymous"], o["endpoint_override"], o["scheme"]) == (True, "127.0.0.1:4443", "http")
        assert sfs.for_ray("gs://bucket/store/p") == ("bucket/store/p", sfs.filesystem_for("gs://bucket/store/p")[0])
        assert sfs.for_ray("/abs/local") == ("/abs/local", None)       # Ray's own handling of local paths
    finally:
        sfs._from_uri.cache_clear()


def test_an_unknown_gs_parameter_is_named_with_the_known_ones():
    from mlops_ray.errors import DataSourceError
    from mlops_ray.storage import fs as sfs
    with pytest.raises(DataSourceError, match=r"unknown gs:// parameter 'anonymous'; the known ones are .*"
                                              r"endpoint_override.*STORAGE_EMULATOR_HOST"):
        sfs.filesystem_for("gs://b/x?anonymous=true")
    with pytest.raises(DataSourceError, match=r"retry_limit_seconds='soon' is not a number"):
        sfs.filesystem_for("gs://b/x?retry_limit_seconds=soon")
