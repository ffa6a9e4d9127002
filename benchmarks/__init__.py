"""Benchmarks for mlops-ray, run with ``python -m benchmarks [NAME ...] [--quick] [--out DIR]``.

A benchmark is a module of this package with one function::

    def run(opts: benchmarks.common.Options) -> list[dict]

that returns result rows (flat dicts, one per measurement). The runner writes them to
``<out>/<name>.json`` (rows + options + machine info) and ``<out>/<name>.md`` (a
Markdown table) and prints the table. To add a benchmark, write the module and add
one line to ``BENCHMARKS``.
"""
from __future__ import annotations

# name -> module (imported only when that benchmark runs). Order = default run order.
BENCHMARKS: dict[str, str] = {
    "data_plane": "benchmarks.data_plane",
    "training": "benchmarks.training",
    "extmem": "benchmarks.extmem",
    "search": "benchmarks.search",
    "quality": "benchmarks.quality",
    "threshold": "benchmarks.threshold",
    "tune_overhead": "benchmarks.tune_overhead",
    "cluster_tune": "benchmarks.cluster_tune",
    "serving": "benchmarks.serving",
    "weight_change": "benchmarks.weight_change",
    "drift": "benchmarks.drift",
    "drift_calendar": "benchmarks.drift_calendar",
    "predict": "benchmarks.predict",
    "submit": "benchmarks.submit",
    "demo": "benchmarks.demo",
    "rerun": "benchmarks.rerun",
}
