"""``make demo`` end to end: the whole loop (train v1, serve, drifted traffic, labels, monitor,
retrain v2, gate, canary, promote, report), timed per stage; median of ``--repeats`` runs.

There is no baseline to divide by: the goal is absolute (under 3 minutes on 2 cores after
installation). Each run starts from an empty demo store (``mlops-ray demo`` wipes its own);
the synthetic months are reused after the first run, as ``make demo`` reuses ``data/demo``.
"""
from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ForeignLoad, Options

ROOT = Path(__file__).resolve().parents[1]


def run(opts: Options) -> list[dict]:
    rows = opts.rows or (20_000 if opts.quick else 50_000)
    work = Path(tempfile.mkdtemp(prefix="mlops-demo-bench-"))
    cfg = work / "quickstart.yaml"
    cfg.write_text((ROOT / "configs" / "quickstart.yaml").read_text().replace("store: .mlops", f"store: {work}/st"))
    out, stages = [], []
    for i in range(1 if opts.quick else opts.repeats):
        load = ForeignLoad()
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "mlops_ray", "demo", str(cfg), "--rows", str(rows), "--data-dir",
                            str(work / "data"), "--html", str(work / "report.html")], cwd=ROOT, capture_output=True,
                           text=True)
        seconds = time.perf_counter() - t
        line = next((x for x in p.stdout.splitlines() if "demo done" in x), "")
        parts = dict((k, float(v)) for k, v in re.findall(r"(\w[\w ]*?) (\d+)s", line.split("(", 1)[-1]))
        decision = _last_decision(work)
        stages.append(parts)
        out.append({"measurement": f"run {i + 1}", "rows_per_month": rows, "seconds": round(seconds, 1),
                    "exit": p.returncode, "outcome": decision.get("outcome"), "version": decision.get("version"),
                    "other_cpu": round(load.share, 2) if load.share is not None else None,
                    **{f"{k.strip()}_s": v for k, v in parts.items()}})
        if p.returncode:
            print(p.stderr[-2000:], flush=True)
    secs = [r["seconds"] for r in out]
    out.append({"measurement": "median", "rows_per_month": rows, "seconds": round(statistics.median(secs), 1),
                "goal": "< 180 s on 2 cores"})
    return out


def _last_decision(work: Path) -> dict:
    path = work / "st-demo" / "fraud-quickstart" / "monitor" / "decisions.jsonl"
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}
