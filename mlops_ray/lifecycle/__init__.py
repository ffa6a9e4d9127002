"""What spans the stages: the monitor-retrain-rollout ``loop``, batch scoring (``predict``), the
``demo`` and the ``reports`` gathered for ``mlops-ray report``. Above pipeline, serve and monitor;
below the CLI."""
