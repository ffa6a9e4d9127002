"""`python -m mlops_ray.cli ...`: the entry point a submitted Ray job runs (see mlops_ray/jobs.py)."""
from mlops_ray.cli import main

main()
