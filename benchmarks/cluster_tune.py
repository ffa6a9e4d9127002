"""Multi-node search: the same Tune search on 1 local node x 4 CPUs and on 2 local nodes x 2 CPUs.

Diagnostics, not a goal. Both clusters are started with ``ray start`` on this host
(``tests.support.cluster.LocalCluster``: explicit ports 6750-6789 and workers 18750-18798, their own
temp dirs, one token) and have the same total CPU budget, 4 logical CPUs. Both stay up for the
whole run and the searches alternate between them (1, 2, 2, 1, ...: load from other processes on
a shared machine hits both alike; an idle cluster costs little). The driver is this process,
connected to one cluster at a time (``ray_runtime(RayConfig(address=...))``); the search is the
project's own ``mlops_ray.train.tune.run_search(strategy="single")`` with the quickstart tune
settings (OptunaSearch TPE in a ConcurrencyLimiter, ASHA, ``cpus_per_trial: 1``, a report every
10 rounds, reused actors), 32 trials of 100 rounds on the same prepared splits
(``benchmarks.train_common.prepare``, cached in ``benchmarks/.data/store``, loaded once).

Reported per search: wall time (cluster start-up excluded), trials/s, CPU seconds of this process
and its descendants (both clusters: steadier than wall time on a shared machine, though each
search also pays the other cluster's idle daemons), the ratios to the medians of the 1-node
searches, how many trials each node ran (the search summary's ``nodes``), the best score, and how
busy other processes kept the CPUs. On one 2-core host both clusters share the
same two cores: the ratio measures what a second node costs (trial data fetched from the head's
object store, a second raylet, actors on two nodes), not a speed-up; a speed-up needs a second
machine.

Run (from the repository root)::

    .venv/bin/python -m benchmarks cluster_tune --repeats 2     # 200k rows, 32 trials, 2 searches each
    .venv/bin/python -m benchmarks cluster_tune --quick         # 50k rows, 8 trials, 1 each
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import statistics
import tempfile
import time

from benchmarks.common import ForeignLoad, Options
from benchmarks.train_common import alternate, prepare, r3, with_model, with_tune

DEFAULT_ROWS, QUICK_ROWS = 200_000, 50_000
TRIALS, QUICK_TRIALS = 32, 8
ROUNDS = 100
# name -> (node names, CPUs per node, first port, first worker port, worker ports per node): this
# benchmark's share of the ports (tests/cluster: 6700-6719, 18700-18749)
SHAPES = {"1 node x 4 CPUs": (("head",), 4, 6750, 18750, 17),
          "2 nodes x 2 CPUs": (("head", "w1"), 2, 6770, 18767, 16)}


def _search(p, trials: int, storage: str, name: str) -> dict:
    from mlops_ray.train import tune as T

    model = with_model(p, num_boost_round=ROUNDS, strategy="single")
    tcfg = with_tune(p, num_samples=trials)
    load = ForeignLoad()
    t = time.perf_counter()
    res = T.run_search(splits=p.splits, model=model, tune_cfg=tcfg, storage=storage, experiment=name,
                       strategy="single")
    wall = time.perf_counter() - t
    share = load.share
    # CPU seconds of this process and its descendants (both clusters' processes): on a shared
    # machine a steadier figure than wall time (benchmarks/predict.py's CpuTiming does the same)
    cpu = sum(last - first for first, last in load._cpu.values())
    return {"wall_s": wall, "cpu_s": cpu, "best_score": res.best_score, "nodes": res.to_dict()["nodes"],
            "stopped": sum(bool(t.get("stopped_early")) for t in res.trials),
            "errors": sum(bool(t.get("error")) for t in res.trials), "other_cpu": share}


def _start(label: str, token: str):
    from tests.support.cluster import LocalCluster

    names, cpus, base, worker_base, worker_ports = SHAPES[label]
    cluster = LocalCluster(names=names, num_cpus=cpus, base=base, worker_base=worker_base,
                           worker_ports=worker_ports, token=token)
    taken = cluster.ports_in_use()
    if taken:
        raise RuntimeError(f"ports {taken} on 127.0.0.1 are in use; this benchmark needs 6750-6789")
    t = time.perf_counter()
    cluster.start()
    print(f"   {label}: cluster up in {time.perf_counter() - t:.1f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in cluster.start_s.items())})", flush=True)
    return cluster, time.perf_counter() - t


def run(opts: Options) -> list[dict]:
    from mlops_ray.config import RayConfig
    from mlops_ray.runtime import ray_runtime

    rows = opts.rows or (QUICK_ROWS if opts.quick else DEFAULT_ROWS)
    trials = QUICK_TRIALS if opts.quick else TRIALS
    repeats = 1 if opts.quick else opts.repeats
    # one token for both clusters: this process drives each in turn, and Ray keeps the token it read first
    token = secrets.token_hex(16)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    storage = tempfile.mkdtemp(prefix="mlops-bench-cluster-")
    out: list[dict] = []
    try:
        with contextlib.ExitStack() as stack:
            clusters = {}
            for label in SHAPES:
                cluster, start_s = _start(label, token)
                stack.callback(cluster.stop)
                clusters[label] = (cluster, start_s)
            one, two = SHAPES
            with ray_runtime(RayConfig(address=clusters[one][0].address)):
                p = prepare(rows)
            print(f"   data: {p.describe()} (prepare_data {p.prepare_s:.1f} s); {trials} trials, {ROUNDS} rounds, "
                  f"scheduler {p.tune.scheduler}, cpus_per_trial {p.tune.cpus_per_trial:g}", flush=True)
            for i in range(repeats):
                for label in alternate(i, one, two):
                    cluster, start_s = clusters[label]
                    with ray_runtime(RayConfig(address=cluster.address)) as info:
                        assert info.num_nodes == len(cluster.names), info
                        r = _search(p, trials, storage, f"n{len(cluster.names)}-{i}-{int(time.time())}")
                    per_node = {next((n for n, nid in cluster.ids.items() if nid == k), k[:8]): v
                                for k, v in r["nodes"].items()}
                    print(f"   {label}, run {i + 1}: {r['wall_s']:.1f} s, {trials / r['wall_s']:.3f} trials/s, "
                          f"{r['cpu_s']:.0f} CPU s, "
                          f"trials per node {per_node}, best {p.tune.metric} {r['best_score']:.5f}, "
                          f"other CPU {r['other_cpu']}", flush=True)
                    out.append({"cluster": label, "nodes": len(cluster.names), "cpus_per_node": cluster.num_cpus,
                                "rows": rows, "trials": trials, "run": i + 1, "wall_s": r3(r["wall_s"]),
                                "trials_per_s": r3(trials / r["wall_s"]), "cpu_s": r3(r["cpu_s"]),
                                "trials_per_node": " ".join(f"{k}:{v}" for k, v in sorted(per_node.items())),
                                "stopped_early": r["stopped"], "errors": r["errors"],
                                "best_score": round(r["best_score"], 5), "cluster_start_s": r3(start_s),
                                "other_cpu": r["other_cpu"]})
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    base = statistics.median(r["wall_s"] for r in out if r["nodes"] == 1)
    base_cpu = statistics.median(r["cpu_s"] for r in out if r["nodes"] == 1)
    for r in out:
        r["vs_1_node"] = r3(r["wall_s"] / base)
        r["cpu_vs_1_node"] = r3(r["cpu_s"] / base_cpu)
    two = [r for r in out if r["nodes"] == 2]
    print(f"   2 nodes / 1 node: {statistics.median(r['vs_1_node'] for r in two):.2f}x the wall time, "
          f"{statistics.median(r['cpu_vs_1_node'] for r in two):.2f}x the CPU seconds (medians), 4 CPUs in all "
          "either way. On one 2-core host this is the overhead of a second node, not a speed-up.", flush=True)
    return out
