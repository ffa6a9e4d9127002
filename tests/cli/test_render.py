"""cli/render.py: --json keeps stdout for the JSON document."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


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
