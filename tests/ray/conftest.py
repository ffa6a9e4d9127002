import pytest


@pytest.fixture(scope="session", autouse=True)
def ray_start_4_cpus():
    """One local Ray (4 logical CPUs) for every test in tests/ray, stopped at the end of the session."""
    from mlops_ray.config import RayConfig
    from mlops_ray.runtime import ray_runtime
    with ray_runtime(RayConfig(num_cpus=4)) as info:
        yield info
