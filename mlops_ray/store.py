"""The store: where a pipeline keeps its outputs (local directory or object-store URI).

Layout: ``{store}/{pipeline name}/data/{key}/`` holds one prepared data set (the
featurized splits, ``feature_spec.json``, ``validation.json``, ``source.json``), where
``key`` hashes the input fingerprint and the config sections that shaped it.
"""
from __future__ import annotations

import json
import posixpath

from pyarrow import fs as pafs

from mlops_ray.data.ingest import filesystem_for


class Store:
    def __init__(self, root: str):
        self.root_uri = root
        self.fs, self.root = filesystem_for(root)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri(self, *parts: str) -> str:
        """A path that Ray workers can open (URI for object stores, absolute path locally)."""
        if "://" in self.root_uri:
            return posixpath.join(self.root_uri.rstrip("/"), *parts)
        return self.path(*parts)

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
