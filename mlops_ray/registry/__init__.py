"""The model registry: trained models in and out of MLflow, with their runs and lineage.

In: ``RegistryConfig``, the store and the pipeline's name; bundle directories written by
training. Out: ``Registry`` (model versions, the ``champion``/``challenger`` aliases, bundles
back as ``Bundle``), the ``RunLog`` of a pipeline run, and ``lineage()`` for a bundle's metadata.

``client`` is the Registry over an ``MlflowClient`` and the alias policy; ``runlog`` one MLflow
run and how values are shaped for it; ``bundle`` the bundle directory format (plain file IO,
no MLflow); ``lineage`` the git commit and package versions. Only this package imports mlflow,
and only inside functions (see ``client``).
"""
from mlops_ray.registry.client import CHALLENGER, CHAMPION, Registry
from mlops_ray.registry.lineage import git_commit, lineage
from mlops_ray.registry.runlog import RunLog, flatten, mask_uri

__all__ = ["CHALLENGER", "CHAMPION", "Registry", "RunLog", "flatten", "git_commit", "lineage", "mask_uri"]
