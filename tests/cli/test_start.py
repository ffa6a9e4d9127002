"""`mlops-ray --help` stays about a second: the CLI's start path imports none of the heavy
libraries (Ray, MLflow, XGBoost, Optuna, scipy, scikit-learn, matplotlib); the commands import
them when they run. A module the CLI imports at the top that starts importing one of them at its
top fails here, not silently in every start."""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit
HEAVY = ("ray", "mlflow", "xgboost", "optuna", "scipy", "sklearn", "matplotlib")


def test_help_imports_no_heavy_library():
    code = ("import sys\n"
            "sys.argv = ['mlops-ray', '--help']\n"
            "from mlops_ray.cli import main\n"
            "try:\n"
            "    main()\n"
            "except SystemExit:\n"
            "    pass\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Usage: mlops-ray" in p.stdout
    assert p.stdout.strip().splitlines()[-1] == "[]"
