"""The store: where a pipeline keeps its outputs (local directory or object-store URI).

Layout: ``{store}/{pipeline name}/data/{key}/`` holds one prepared data set (the
featurized splits, ``feature_spec.json``, ``validation.json``, ``source.json``), where
``key`` hashes the input fingerprint and the config sections that shaped it.
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid

import pyarrow as pa
from pyarrow import fs as pafs

from mlops_ray.errors import ConfigError
from mlops_ray.storage.fs import filesystem_for, gcs_credentials_missing


class Store:
    def __init__(self, root: str):
        self.root_uri = root
        self._fs = None
        self.root = _root_path(root)

    @property
    def fs(self) -> pafs.FileSystem:
        """Resolved on first use: naming a path in the store never touches the network (resolving
        an s3:// URI asks the bucket for its region)."""
        if self._fs is None:
            self._fs, root = filesystem_for(self.root_uri)
            self.root = root
        return self._fs

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri(self, *parts: str) -> str:
        """A path that Ray workers can open (URI for object stores, absolute path locally)."""
        if "://" in self.root_uri:
            base, q, query = self.root_uri.partition("?")      # s3://b/k?endpoint_override=...: parts go before the query
            return posixpath.join(base.rstrip("/"), *parts) + q + query
        return self.path(*parts)

    def check_writable(self, name: str) -> None:
        """Write and delete a small object under ``{store}/{name}/`` before any work starts, so a
        missing bucket, missing credentials or a read-only path fail at once with the fix
        (ConfigError, exit 2) instead of in the middle of a search."""
        if self.root_uri.split("://", 1)[0] in ("gs", "gcs") and gcs_credentials_missing():
            raise ConfigError(f"store {self.root_uri!r} cannot be used: no Google Cloud credentials are set. Set "
                              "GOOGLE_APPLICATION_CREDENTIALS to a service account key file (or run `gcloud auth "
                              "application-default login`) in the environment of every process that uses the "
                              "store; for a storage emulator set STORAGE_EMULATOR_HOST=host:port")
        probe = self.path(name, f".probe-{uuid.uuid4().hex[:8]}")
        try:
            if self.root_uri.split("://", 1)[0] in ("gs", "gcs"):
                # pyarrow's create_dir would try to create a missing bucket ("missing project id")
                bucket = self.root.split("/", 1)[0]
                if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    raise OSError(f"bucket {bucket} does not exist")
            local = isinstance(self.fs, pafs.LocalFileSystem)     # object stores have no directories to leave
            made = [d for d in (self.root, self.path(name))
                    if local and self.fs.get_file_info(d).type == pafs.FileType.NotFound]
            self.fs.create_dir(posixpath.dirname(probe), recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
            for d in reversed(made):          # a probe leaves nothing behind (a failed step changes nothing)
                if self.fs.get_file_info(pafs.FileSelector(d)) == []:
                    self.fs.delete_dir(d)
        except (OSError, pa.ArrowException) as e:
            raise ConfigError(f"store {self.root_uri!r} cannot be written: {_why(str(e), self.root_uri)}") from None

    def write_json(self, path: str, obj) -> None:
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(json.dumps(obj, indent=2, default=str).encode())

    def read_json(self, path: str):
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def clear(self, path: str) -> None:
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Readers never see half a file: a temp file and a rename on local disk (and NFS), one PUT
    on object stores (they publish an object when its upload completes)."""
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def _root_path(uri: str) -> str:
    """The store root as its filesystem names it (``bucket/prefix`` for object stores), without
    resolving the filesystem."""
    if "://" not in uri:
        return filesystem_for(uri)[1]
    scheme, rest = uri.split("://", 1)
    rest = rest.split("?", 1)[0].rstrip("/")
    return rest if scheme != "file" else "/" + rest.lstrip("/")


def _why(err: str, uri: str) -> str:
    """An object store's error, turned into what to do about it."""
    low = err.lower()
    bucket = uri.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0]
    if "bucket" in low and ("not found" in low or "does not exist" in low or "nosuchbucket" in low):
        if uri.startswith("gs"):
            return (f"bucket {bucket!r} does not exist. Create it (`gcloud storage buckets create gs://{bucket}`) "
                    "or fix the store URI; for a storage emulator set STORAGE_EMULATOR_HOST=host:port")
        return (f"bucket {bucket!r} does not exist. Create it (`aws s3 mb s3://{bucket}`) or fix the "
                "store URI; for an S3-compatible server set AWS_ENDPOINT_URL (or ?endpoint_override=host:port)")
    if any(k in low for k in ("credential", "access token", "access denied", "access_denied", "accessdenied", "forbidden",
                              "invalidaccesskeyid", "signaturedoesnotmatch", "403")):
        none = (uri.startswith("s3") and not any(os.environ.get(k) for k in (
            "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"))
                or uri.startswith("gs") and gcs_credentials_missing())
        what = "no credentials are set" if none else "the credentials were refused"
        return (f"access denied: {what} ({err[:160]}). Set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://, "
                "in the environment of every process that uses the store")
    if "permission denied" in low or "read-only" in low:
        return f"permission denied ({err[:200]}); choose a store path this user can write"
    return f"{err[:300]}. Check the URI, the credentials and that the server is reachable"
