"""Cache keys: what a step's stored output is filed under, so an unchanged rerun finds it.

In: the config and the fingerprints of a step's inputs. Out: a 16-hex-digit key, the ``{key}``
of the store's ``data/{key}/`` and ``runs/{key}/`` (``storage/catalog.py``). A key hashes, in this
order, a layout tag, the inputs' fingerprints, the config sections that shape the output, single
config values, and the package version: change any of them and the step's output is recomputed.

Two keys cover the table of steps (``pipeline/steps.py``):

* ``DATA_KEY`` (ingest, validate, featurize, reference): the source's fingerprint and the
  ``data``, ``schema`` and ``features`` sections, and ``model.task``;
* ``TRAIN_KEY`` (tune, threshold, evaluate, gate, register): the data key and the ``model``,
  ``tune``, ``gate`` and ``registry`` sections.

These recipes are the ones existing stores were written with; changing one (its parts or their
order) makes every cached run of every store stale.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mlops_ray._version import __version__
from mlops_ray.config import Config

DATA_LAYOUT = "2"     # 2: featurize keeps the raw test rows (test_raw/) for the gate; older caches are refit


@dataclass(frozen=True)
class CacheKey:
    """The parts a key is made of: ``inputs`` name fingerprints the caller gives, ``sections``
    config sections (their ``section_hash``), ``fields`` dotted single config values."""
    name: str
    inputs: tuple[str, ...]
    sections: tuple[str, ...]
    fields: tuple[str, ...] = ()
    tag: tuple[str, ...] = ()

    def digest(self, cfg: Config, fingerprints: dict[str, str]) -> str:
        parts = [*self.tag, *(fingerprints[i] for i in self.inputs),
                 *(getattr(cfg, s).section_hash() for s in self.sections),
                 *(str(_field(cfg, f)) for f in self.fields), __version__]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _field(cfg: Config, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


DATA_KEY = CacheKey("data", inputs=("source",), sections=("data", "schema_", "features"),
                    fields=("model.task",), tag=(DATA_LAYOUT,))
TRAIN_KEY = CacheKey("train", inputs=("data",), sections=("model", "tune", "gate", "registry"))


def data_key(cfg: Config, source_fingerprint: str) -> str:
    """The key of the data prepared from a source with this fingerprint."""
    return DATA_KEY.digest(cfg, {"source": source_fingerprint})


def train_key(cfg: Config, data_key: str) -> str:
    """The key of the search, fit and registration of this data under this config."""
    return TRAIN_KEY.digest(cfg, {"data": data_key})
