"""storage/state.py: the serving-state record and where it, the spool and the head record live."""
from __future__ import annotations

import pytest

from mlops_ray.storage.state import ServingState, head_file, read_state, spool_dir, state_path, write_state

pytestmark = pytest.mark.unit


def test_serving_state_spool_and_head_follow_the_store(tmp_path):
    local = str(tmp_path / "st")
    assert state_path(local, "p") == f"{local}/p/serving/state.json"
    assert spool_dir(local, "p") == f"{local}/p/serving/spool"
    remote = "s3://b/k"
    assert state_path(remote, "p") == "s3://b/k/p/serving/state.json"
    assert "://" not in spool_dir(remote, "p") and "://" not in head_file(remote, "p")   # node-local
    write_state(state_path(local, "p"), ServingState(name="m", stable="1"))
    assert read_state(state_path(local, "p")).stable == "1"
