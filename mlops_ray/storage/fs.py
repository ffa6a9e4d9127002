"""Where bytes live: one resolution of local paths and URIs (s3://, gs://, file://) to a pyarrow
filesystem, shared by ingest, the store, serving and monitoring.

In: a path or URI. Out: ``(filesystem, path)`` for pyarrow, or ``(path, filesystem)`` for a Ray API
(``for_ray``). gs:// gets a bounded retry and the storage emulator (``STORAGE_EMULATOR_HOST``).
"""
from __future__ import annotations

import datetime as dt
import functools
import os
import socket
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
from pyarrow import fs as pafs

from mlops_ray.errors import DataSourceError


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or any URI pyarrow understands (s3://, gs://, file://).
    URIs are resolved once per process: resolving an s3:// URI can ask the bucket for its region,
    and replicas resolve the serving state's URI every poll."""
    if "://" in uri:
        return _from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def for_ray(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """(path, filesystem) to hand a Ray API (Ray Data's read/write, Tune's and Train's storage) for
    a store or source location: for a URI the filesystem resolved here, with this module's options
    (a gs:// store's emulator and retry limit), not the one Ray would build from the bare string;
    a local path is passed as it is (``None``: Ray's own handling of local paths)."""
    if "://" not in uri:
        return uri, None
    fs, path = filesystem_for(uri)
    return path, fs


# gs:// query parameters pyarrow's GcsFileSystem accepts (by their GcsOptions names)
_GCS_PARAMS = {"endpoint_override", "scheme", "project_id", "retry_limit_seconds", "default_bucket_location"}
GCS_RETRY_S = 30.0


@functools.lru_cache(maxsize=256)
def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        if uri.split("://", 1)[0] in ("gs", "gcs"):
            return _gcs(uri)
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        raise DataSourceError(f"cannot open {uri!r}: {e}. Check the URI scheme and credentials") from None


def _gcs(uri: str) -> tuple[pafs.FileSystem, str]:
    """A gs:// URI as a GcsFileSystem. Two things differ from pyarrow's own ``from_uri``:
    a request that keeps failing gives up after ``retry_limit_seconds`` (default 30 s, where
    pyarrow's is 15 minutes, so missing credentials hang a run that long, silently), and
    ``STORAGE_EMULATOR_HOST`` (the variable Google's clients read, MLflow's among them) points at
    a storage emulator, unauthenticated, as no URI parameter can (pyarrow rejects ``anonymous``)."""
    u = urlsplit(uri)
    params = dict(parse_qsl(u.query))
    unknown = sorted(set(params) - _GCS_PARAMS)
    if unknown:
        raise DataSourceError(f"cannot open {uri!r}: unknown gs:// parameter {unknown[0]!r}; the known ones are "
                              f"{', '.join(sorted(_GCS_PARAMS))} (for an emulator set STORAGE_EMULATOR_HOST)")
    kw: dict = {}
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if emulator:
        e = urlsplit(emulator if "://" in emulator else f"http://{emulator}")
        kw.update(anonymous=True, endpoint_override=e.netloc, scheme=e.scheme)
    for k in ("endpoint_override", "scheme", "project_id", "default_bucket_location"):
        if k in params:
            kw[k] = params[k]
    try:
        retry = float(params.get("retry_limit_seconds", GCS_RETRY_S))
    except ValueError:
        raise DataSourceError(f"cannot open {uri!r}: retry_limit_seconds={params['retry_limit_seconds']!r} "
                              "is not a number of seconds") from None
    kw["retry_time_limit"] = dt.timedelta(seconds=retry)
    return pafs.GcsFileSystem(**kw), (u.netloc + u.path).rstrip("/")


def gcs_credentials_missing() -> bool:
    """True when a gs:// request would find no credentials: no emulator, no
    GOOGLE_APPLICATION_CREDENTIALS, no gcloud application-default login and no GCE metadata
    server (only resolvable on Google Cloud). Checked before a store is used, so the answer is an
    error naming the fix, not a request retried until it times out."""
    if os.environ.get("STORAGE_EMULATOR_HOST") or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return False
    cfg_dir = os.environ.get("CLOUDSDK_CONFIG") or os.path.expanduser("~/.config/gcloud")
    if os.path.exists(os.path.join(cfg_dir, "application_default_credentials.json")):
        return False
    try:
        socket.getaddrinfo(os.environ.get("GCE_METADATA_HOST", "metadata.google.internal"), 80)
        return False
    except OSError:
        return True


