"""Cluster-facing code: submitting a pipeline as a Ray job (``jobs``) and checking KubeRay and
cluster-launcher manifests against their schemas (``manifests``, ``schemas/kuberay``)."""
