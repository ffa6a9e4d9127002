"""The store catalog is the one place store paths are built, and the process check it relies on."""
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from mlops_ray.storage import procs
from mlops_ray.storage.catalog import Catalog

pytestmark = pytest.mark.unit

PKG = pathlib.Path(__file__).resolve().parents[2] / "mlops_ray"


def test_no_module_but_the_catalog_builds_a_store_path_from_a_literal():
    literal = re.compile(r'\.(path|uri)\((self\.)?(cfg\.)?name, "')
    offenders = [f"{p.relative_to(PKG.parent)}:{i}" for p in PKG.rglob("*.py") if p.name != "catalog.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert offenders == [], f"store paths built outside storage/catalog.py: {offenders}"


def test_the_catalog_keeps_todays_layout(tmp_path):
    c = Catalog(str(tmp_path), "p")
    assert c.data_done("k") == f"{tmp_path}/p/data/k/_SUCCESS"
    assert c.features_split("k", "train") == f"{tmp_path}/p/data/k/features/split=train"
    assert c.serving_state() == f"{tmp_path}/p/serving/state.json"
    assert c.spool_dir() == f"{tmp_path}/p/serving/spool"
    assert c.head_record() == f"{tmp_path}/p/serving/head.json"
    assert c.thresholds(3) == f"{tmp_path}/p/thresholds/v3.json"
    s3 = Catalog("s3://bucket/pre?endpoint_override=h:1", "p")
    assert s3.predlog_dir() == "s3://bucket/pre/p/predlog?endpoint_override=h:1"
    assert s3.head_record().endswith("/p/head.json") and "mlops-ray/heads" in s3.head_record()
    assert not s3.spool_dir().startswith("s3://")           # spools are always local


def test_a_pid_is_alive_only_while_its_process_runs_and_is_the_recorded_one():
    me = os.getpid()
    assert procs.alive(me) and procs.alive(me, procs.started(me))
    assert not procs.alive(me, procs.started(me) - 60)      # the same pid, another start: a reused pid
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not procs.alive(child.pid) and procs.started(child.pid) is None
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(100):                                  # exited, not yet reaped
            if procs.alive(zombie.pid) is False:
                break
            time.sleep(0.02)
        assert not procs.alive(zombie.pid)
    finally:
        zombie.wait()
    assert not procs.alive(None) and not procs.alive("not a pid")
