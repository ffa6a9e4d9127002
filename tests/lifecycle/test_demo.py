"""`make demo`'s files and the README's next command: the quickstart's source holds only its data."""
import os
from pathlib import Path

import pandas as pd
import pytest

from mlops_ray.config import load_config
from mlops_ray.data import ingest
from mlops_ray.lifecycle.demo import demo_paths, synthesize

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_after_the_demo_the_quickstarts_source_is_month_1_alone(tmp_path, monkeypatch):
    """The demo wrote month1/, month2/ and the labels file into the quickstart's source directory, and
    `mlops-ray run configs/quickstart.yaml` then read all three as one table."""
    monkeypatch.chdir(tmp_path)
    m1, m2 = synthesize("data/demo", 2000)                   # as `make demo` does (--data-dir data/demo)
    paths = demo_paths("data/demo")
    pd.DataFrame({"request_id": ["r1"], "row": [0], "is_fraud": [1]}).to_parquet(paths["labels"])
    Path(paths["config"]).write_text("name: x\n")
    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    source = ingest.inspect_source(cfg.data)
    assert {os.path.dirname(e.path) for e in source.files} == {os.path.abspath(m1)}
    assert source.rows == 2000 and "request_id" not in source.schema.names
    for other in (m2, paths["labels"], paths["config"]):
        assert not os.path.abspath(other).startswith(os.path.abspath(cfg.data.sources[0]) + os.sep)
