"""runtime.py's care of Ray's address file (/tmp/ray/ray_current_cluster), on a file of the test's own."""
import socket

import pytest

from mlops_ray import runtime
from mlops_ray.runtime import node_local_store_problem
from mlops_ray.serve import head

pytestmark = pytest.mark.unit


@pytest.fixture
def address_file(tmp_path, monkeypatch):
    import ray._common.utils as U
    path = tmp_path / "ray_current_cluster"
    monkeypatch.setattr(U, "get_ray_address_file", lambda temp_dir: str(path))
    return path


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_a_record_of_a_head_that_is_gone_is_removed_before_an_embedded_start(address_file):
    address_file.write_text(f"127.0.0.1:{_dead_port()}")
    assert runtime.forget_stale_ray_address() is True
    assert not address_file.exists()


def test_a_record_of_a_running_head_is_kept(address_file):
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen(1)
        address_file.write_text(f"127.0.0.1:{live.getsockname()[1]}")
        assert runtime.forget_stale_ray_address() is False
    assert address_file.exists()


def test_an_unreadable_record_or_none_is_left_alone(address_file):
    assert runtime.forget_stale_ray_address() is False
    address_file.write_text("not an address")
    assert runtime.forget_stale_ray_address() is False and address_file.read_text() == "not an address"


def test_stopping_our_head_removes_its_record_and_only_its(address_file):
    address_file.write_text("192.0.2.2:47519")           # another head's (the node IP form ray start writes)
    assert head.stop_head({"pid": 0, "address": "127.0.0.1:6390"}) is False
    assert address_file.exists()
    assert head.stop_head({"pid": 0, "address": "127.0.0.1:47519"}) is False     # not running any more
    assert not address_file.exists()


def test_a_ray_that_does_not_start_in_time_is_a_resources_error(monkeypatch):
    """On a busy machine ray.init raised 'The current node timed out during startup', reported as a bug."""
    import ray

    from mlops_ray.config import RayConfig
    from mlops_ray.errors import ExitCode, ResourceError
    from mlops_ray.runtime import ray_runtime

    def slow_start(*a, **k):
        raise Exception("The current node timed out during startup. This could happen because some of the "
                        "Ray processes failed to startup.")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", slow_start)
    with pytest.raises(ResourceError, match=r"the embedded Ray did not start \(The current node timed out during "
                                            r"startup.*retry when it is quieter, lower ray.num_cpus") as e:
        with ray_runtime(RayConfig(num_cpus=2)):
            pass
    assert e.value.exit_code == ExitCode.RESOURCES


def test_a_node_local_store_is_refused_on_a_cluster_of_several_machines():
    one_host = [{"Alive": True, "NodeManagerAddress": "127.0.0.1"}] * 2
    two_hosts = [{"Alive": True, "NodeManagerAddress": "10.0.0.1"}, {"Alive": True, "NodeManagerAddress": "10.0.0.2"}]
    assert node_local_store_problem("/data/store", False, one_host) is None       # local-cluster.sh: one disk
    why = node_local_store_problem("/data/store", False, two_hosts)
    assert "store '/data/store' is a path on one machine's disk" in why and "2 machines" in why
    assert "s3://bucket/prefix" in why and "store_shared: true" in why
    assert node_local_store_problem("/nfs/store", True, two_hosts) is None
    assert node_local_store_problem("s3://b/k", False, two_hosts) is None


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
