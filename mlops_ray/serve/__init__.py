"""Serving on Ray Serve: one ingress deployment whose replicas hold the stable and canary versions
and route in process by weight.

In: registered bundles and the serving-state record (``storage.state``). Out: predictions over
HTTP (``app``, with the request contract in ``api``), per-replica statistics (``stats``), the
prediction log. ``control`` deploys, reports status and stops; ``rollout`` moves the canary step by
step and rolls back on its own; ``head`` is the local Ray that serving runs on without a cluster;
``endpoints`` finds the addresses to send requests to.
"""
