"""Closed-loop HTTP load generator (asyncio + aiohttp) for the serving benchmark.

``clients`` coroutines share one keep-alive ``aiohttp.ClientSession`` (``TCPConnector(limit=clients)``);
each POSTs a body (round-robin over ``bodies``, ``content-type: application/json``), waits for the
answer, and sends the next one at once. The first ``warmup_s`` seconds are not measured; then a
response counts if it completes within the next ``seconds`` (requests still in flight at the end are
awaited and dropped). Non-2xx answers and connection errors (status 0) are errors; latencies
(``time.perf_counter``) of successful answers give the percentiles; ``rows_per_s`` counts the rows of
the successful bodies (a body that is a JSON list counts ``len`` rows, anything else one row).
``client_cpu_s`` is the CPU time the generator itself used during the measured window.

The client shares the machine's cores with the server, so it is kept cheap: uvloop when installed,
bodies encoded once, responses parsed only when ``on_response`` is given, no per-request objects
beyond the latency list. Still, aiohttp costs ~150-300 us of CPU per request (a trivial server tops
out near 4k rps, the generator then using ~0.5 core). In the benchmark it runs in its own process
(``load_in_subprocess``), so it never competes with the server for the GIL, and ``client_cpu_s``
shows what it took from the server's cores.

    python -m benchmarks.loadgen URL --clients 8 --seconds 10 [--rows 1] [--body-file F]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import aiohttp


@dataclass
class LoadResult:
    clients: int
    requests: int                  # successful (2xx) responses completed in the measured window
    errors: int                    # non-2xx responses and connection errors in the window
    status_counts: dict[int, int] = field(default_factory=dict)   # 0 = connection error / timeout
    seconds: float = 0.0           # measured window
    rps: float = 0.0
    rows_per_s: float = 0.0
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    client_cpu_s: float = 0.0      # CPU time of the load generator during the window

    def to_dict(self) -> dict:
        return asdict(self)


def _rows_in(body: bytes) -> int:
    try:
        obj = json.loads(body)
    except ValueError:
        return 1
    return len(obj) if isinstance(obj, list) else 1


def _pct(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_ms:
        return math.nan
    return sorted_ms[min(len(sorted_ms) - 1, max(0, math.ceil(q * len(sorted_ms)) - 1))]


async def run_load(url: str, bodies: list[bytes], *, clients: int, seconds: float, warmup_s: float = 1.0,
                   headers: dict | None = None,
                   on_response: Callable[[int, Any, float], None] | None = None) -> LoadResult:
    """Drive ``url`` with ``clients`` closed-loop clients for ``warmup_s`` + ``seconds``.

    ``on_response(status, json_body_or_None, latency_s)`` is called for every response, warm-up
    included (the body is parsed as JSON only when it is given)."""
    if not bodies:
        raise ValueError("bodies is empty")
    rows = [_rows_in(b) for b in bodies]
    hdrs = {"content-type": "application/json", **(headers or {})}
    lat: list[float] = []
    status_counts: dict[int, int] = {}
    counted = {"ok": 0, "err": 0, "rows": 0}
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup_s, t_start + warmup_s + seconds
    cpu: list[float] = []

    async def cpu_window() -> None:     # process CPU time at the start and end of the window
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        cpu.append(time.process_time())
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        cpu.append(time.process_time())

    async def client(i: int) -> None:
        n = len(bodies)
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            k = i % n
            i += clients
            try:
                async with session.post(url, data=bodies[k], headers=hdrs) as resp:
                    status = resp.status
                    if on_response is not None:
                        raw = await resp.read()
                        try:
                            payload = json.loads(raw)
                        except ValueError:
                            payload = None
                    else:
                        await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                status = 0
            t1 = time.perf_counter()
            if status and on_response is not None:
                on_response(status, payload, t1 - t0)
            if t_measure <= t1 < t_end:
                status_counts[status] = status_counts.get(status, 0) + 1
                if 200 <= status < 300:
                    counted["ok"] += 1
                    counted["rows"] += rows[k]
                    lat.append(t1 - t0)
                else:
                    counted["err"] += 1
            if status == 0:
                await asyncio.sleep(0.01)   # a dead server must not turn this into a busy loop

    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     skip_auto_headers=("User-Agent",)) as session:
        await asyncio.gather(cpu_window(), *(client(i) for i in range(clients)))
    cpu_s = cpu[1] - cpu[0]
    ms = sorted(x * 1000.0 for x in lat)
    return LoadResult(clients=clients, requests=counted["ok"], errors=counted["err"],
                      status_counts=dict(sorted(status_counts.items())), seconds=seconds,
                      rps=counted["ok"] / seconds, rows_per_s=counted["rows"] / seconds,
                      p50_ms=_pct(ms, 0.50), p90_ms=_pct(ms, 0.90), p99_ms=_pct(ms, 0.99),
                      max_ms=ms[-1] if ms else math.nan, client_cpu_s=round(cpu_s, 3))


def load(url: str, bodies: list[bytes], **kw) -> LoadResult:
    """``run_load`` on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_load(url, bodies, **kw))


def load_in_subprocess(url: str, bodies: list[bytes], **kw) -> LoadResult:
    """``load`` in a separate 'spawn' process (its own interpreter and GIL); blocks until it is done.
    ``on_response`` is not supported here (it would run in the other process). Like any 'spawn'
    process it re-imports the caller's ``__main__``, so call it from a file or ``-m``, not from stdin."""
    if kw.get("on_response") is not None:
        raise TypeError("on_response cannot cross processes; use load() or run_load() in-process")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(load, url, bodies, **kw).result()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rows", type=int, default=1, help="rows per body when no --body-file (all fields empty)")
    p.add_argument("--body-file", help="a JSON file: one body, or a list of bodies when it holds a list of lists")
    a = p.parse_args(argv)
    if a.body_file:
        with open(a.body_file, "rb") as f:
            obj = json.load(f)
        if isinstance(obj, list) and obj and all(isinstance(x, list) for x in obj):
            bodies = [json.dumps(x).encode() for x in obj]
        else:
            bodies = [json.dumps(obj).encode()]
    else:
        bodies = [json.dumps({} if a.rows == 1 else [{}] * a.rows).encode()]
    r = load(a.url, bodies, clients=a.clients, seconds=a.seconds, warmup_s=a.warmup)
    print(json.dumps(r.to_dict(), indent=1))
    return 0 if r.requests and not r.errors else 1


if __name__ == "__main__":
    sys.exit(main())
