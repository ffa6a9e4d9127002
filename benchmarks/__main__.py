"""``python -m benchmarks [NAME ...] [--quick] [--rows N] [--repeats N] [--wait-quiet S] [--out DIR]``

Runs the named benchmarks (default: all in ``benchmarks.BENCHMARKS``), writes
``<out>/<name>.json`` and ``<out>/<name>.md`` for each, and prints the tables.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import BENCHMARKS
from benchmarks.common import ForeignLoad, Options, machine_info, machine_line, markdown_table, wait_for_quiet


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    p.add_argument("--quick", action="store_true", help="small sizes: check that it works, not a figure")
    p.add_argument("--rows", type=int, default=int(os.environ.get("MLOPS_BENCH_ROWS", 0)) or None,
                   help="data size for benchmarks that take one (default: theirs; env MLOPS_BENCH_ROWS)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median reported)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="before each benchmark, wait up to this long for other processes to leave "
                        "the CPUs idle (shared machines)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                   help="directory for <name>.json and <name>.md (default: benchmarks/results)")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    opts = Options(quick=args.quick, rows=args.rows, repeats=max(1, args.repeats))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    for name in args.names or list(BENCHMARKS):
        print(f"== {name} ({'quick' if opts.quick else 'full'}) on {machine_line(machine)}", flush=True)
        module = importlib.import_module(BENCHMARKS[name])
        if args.wait_quiet > 0:
            idle = wait_for_quiet(args.wait_quiet)
            print(f"   other processes were using {_pct(idle)} of the CPUs at the start", flush=True)
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        load = ForeignLoad()
        t = time.perf_counter()
        rows = module.run(opts)
        seconds = time.perf_counter() - t
        foreign = load.share
        table = markdown_table(rows)
        record = {"benchmark": name, "started": started, "seconds": round(seconds, 1), "options": asdict(opts),
                  "machine": machine, "foreign_cpu_share": foreign, "rows": rows}
        (out / f"{name}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
        doc = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else name
        (out / f"{name}.md").write_text(
            f"# {name}\n\n{doc}\n\n{started}, {'quick' if opts.quick else 'full'} run, "
            f"{seconds:.0f} s in all. Machine: {machine_line(machine)}. Other processes kept "
            f"{_pct(foreign)} of the CPUs busy during the run.\n\n{table}")
        print(table, flush=True)
        print(f"other processes kept {_pct(foreign)} of the CPUs busy during the run", flush=True)
        print(f"wrote {out / (name + '.json')} and {out / (name + '.md')} ({seconds:.0f} s)", flush=True)
    return 0


def _pct(share: float | None) -> str:
    return "an unknown share" if share is None else f"{share:.0%}"


if __name__ == "__main__":
    sys.exit(main())
