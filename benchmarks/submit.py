"""Job submission overhead: ``mlops-ray submit --wait`` to a local Ray head vs the same command run directly.

One single-node head with its dashboard (``tests.cluster.test_submit.Head``: ``ray start --head
--block``, 4 CPUs, ports 6650-6654 / 8650-8654 / workers 18650-18699, its own temp dir and token),
started once for the benchmark and stopped by killing its processes. The project is
``tests.cluster.test_submit.make_project``: a temp project root (pyproject.toml, a copy of
mlops_ray/, configs/tiny.yaml) whose data (synthetic, ``ROWS`` rows) and store live outside it.
Two commands, each run both ways in the same run, as a user runs them (a fresh CLI process):

* **config check** -- no Ray at all: the pure cost of a job (upload, job supervisor actor, driver
  process, log streaming). Median of ``--repeats`` (default 3), alternating the two ways.
* **run** -- the whole tiny pipeline (2 trials, 30 rounds): directly it starts an embedded Ray
  (4 logical CPUs); as a job it connects to the head. Once each (``--repeats`` > 3 runs it twice).

Reported per way (seconds from starting the CLI process): ``first_line_s`` (the first line of
output: a direct run's first progress line, a job's first log line, which is Ray's "Runtime env is
setting up"), ``done_s`` (the process exits); for jobs also ``accepted_s`` (the package is uploaded
and the job accepted, from ``submit``'s own timings) and ``entrypoint_s`` (Ray's "Running
entrypoint" line: the runtime env is ready and the driver starts); the ratio ``vs_direct`` (this
``done_s`` / the direct one) and ``other_cpu``, the share of the CPUs other processes used meanwhile
(anything above ~0.1 skews the figure).

Run (from the repository root)::

    .venv/bin/python -m benchmarks submit
    .venv/bin/python -m benchmarks submit --quick     # config check only
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ForeignLoad, Options

PORTS = {"port": 6650, "ray-client-server-port": 6651, "object-manager-port": 6652, "node-manager-port": 6653,
         "dashboard-port": 8650, "dashboard-agent-listen-port": 8651, "dashboard-agent-grpc-port": 8652,
         "runtime-env-agent-port": 8653, "metrics-export-port": 8654,
         "min-worker-port": 18650, "max-worker-port": 18699}
ROWS = 10_000


def timed_cli(args: list[str], cwd: Path, env: dict) -> dict:
    """Run ``python -m mlops_ray ARGS``; seconds to its first output line and to its exit."""
    load = ForeignLoad()
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "mlops_ray", *args], cwd=cwd, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first, lines = None, []
    for line in p.stdout:
        if first is None and line.strip():
            first = time.perf_counter() - t0
        lines.append(line)
    code = p.wait()
    done = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"`mlops-ray {' '.join(args)}` exited {code}:\n{''.join(lines)[-3000:]}")
    return {"first_line_s": first, "done_s": done, "other_cpu": load.share, "output": "".join(lines)}


def timed_submit(args: list[str], project: dict, head, env: dict) -> dict:
    """``mlops-ray submit CONFIG --address ... --wait --json -- ARGS``: stdout is the JSON result,
    stderr the job's logs (merged here would break the JSON: read stderr for the first line)."""
    load = ForeignLoad()
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "mlops_ray", "submit", project["config"], "--address", head.address,
                          "--wait", "--json", "--", *args], cwd=project["project"], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first, started, logs = None, None, []
    for line in p.stderr:
        if first is None and line.strip():
            first = time.perf_counter() - t0
        if started is None and "Running entrypoint for job" in line:
            started = time.perf_counter() - t0
        logs.append(line)
    out = p.stdout.read()
    code = p.wait()
    done = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"submit of `{' '.join(args)}` exited {code}:\n{out[-2000:]}\n{''.join(logs)[-3000:]}")
    res = json.loads(out)
    return {"first_line_s": first, "entrypoint_s": started, "done_s": done, "accepted_s": res["seconds"]["submitted"],
            "upload_bytes": res["upload_bytes"], "other_cpu": load.share, "job_id": res["job_id"]}


def _row(measurement: str, way: str, runs: list[dict], direct_done: float | None) -> dict:
    med = lambda k: statistics.median(r[k] for r in runs) if all(r.get(k) is not None for r in runs) else None  # noqa: E731
    done = med("done_s")
    return {"measurement": measurement, "way": way, "runs": len(runs),
            "accepted_s": round(med("accepted_s"), 2) if med("accepted_s") is not None else None,
            "first_line_s": round(med("first_line_s"), 2) if med("first_line_s") is not None else None,
            "entrypoint_s": round(med("entrypoint_s"), 2) if med("entrypoint_s") is not None else None,
            "done_s": round(done, 2), "min_done_s": round(min(r["done_s"] for r in runs), 2),
            "vs_direct": round(done / direct_done, 2) if direct_done else None,
            "other_cpu": round(med("other_cpu"), 2) if med("other_cpu") is not None else None}


def run(opts: Options) -> list[dict]:
    from tests.cluster.test_submit import Head, make_project

    base = Path(tempfile.mkdtemp(prefix="mlops-bench-submit-"))
    t = time.perf_counter()
    head = Head(PORTS).start()
    print(f"   head up in {time.perf_counter() - t:.1f} s at {head.address}", flush=True)
    try:
        project = make_project(base, rows=opts.rows or ROWS)
        env = head.env                          # the head's token: submit sends it; direct runs ignore it
        config = str(project["project"] / project["config"])
        rows = []
        cases = [("config check", ["config", "check"], opts.repeats)]
        if not opts.quick:
            cases.append(("run (tiny pipeline, 2 trials)", ["run"], 1 if opts.repeats <= 3 else 2))
        for name, words, n in cases:
            direct, job = [], []
            for i in range(n):
                store = ["--set", f"store={base / f'store-{len(rows)}-{i}'}"] if words == ["run"] else []
                ways = [("direct", lambda: direct.append(timed_cli([*words, config, *store], base, env))),
                        ("submit", lambda: job.append(timed_submit([*words, *store], project, head, env)))]
                for way, fn in (ways if i % 2 == 0 else ways[::-1]):
                    fn()
                j = job[-1]
                print(f"   {name} #{i + 1}: direct {direct[-1]['done_s']:.1f} s, submitted {j['done_s']:.1f} s "
                      f"(accepted {j['accepted_s']:.1f} s, first log line {j['first_line_s']:.1f} s, entrypoint "
                      f"started {j['entrypoint_s'] or float('nan'):.1f} s)", flush=True)
            d = _row(name, "direct", direct, None)
            rows += [d, _row(name, "submit --wait", job, d["done_s"])]
            print(f"   {name}: submitted / direct = {rows[-1]['vs_direct']:.2f}x "
                  f"(+{rows[-1]['done_s'] - d['done_s']:.1f} s)", flush=True)
        rows[-1]["note"] = f"upload {job[-1]['upload_bytes'] / 1024:.0f} KiB"
        return rows
    except BaseException:
        print(f"   the head's log ends with:\n{head._tail()}", flush=True)
        raise
    finally:
        head.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    import benchmarks
    from benchmarks.__main__ import main

    benchmarks.BENCHMARKS.setdefault("submit", "benchmarks.submit")
    sys.exit(main(["submit", *sys.argv[1:]]))
