"""Test helpers for HTTP serving tests: closed-loop load clients and a free port range."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import uuid


def request_rows(df, n: int, drop=("transaction_id", "is_fraud")) -> list[dict]:
    """The first ``n`` rows of a synthetic frame as /predict bodies: without the id and label,
    datetimes as ISO strings, missing values as JSON null."""
    rows = df.drop(columns=list(drop)).head(n).copy()
    rows["event_time"] = rows["event_time"].astype(str)
    return rows.astype(object).where(rows.notna(), None).to_dict("records")


def free_range(count: int, lo: int = 20000, hi: int = 32000) -> int:
    """The first of ``count`` consecutive loopback ports that are all free (each can be bound now),
    searched from a start that differs per process and moment, below Linux's ephemeral range, so
    concurrent test sessions rarely pick the same block."""
    span = hi - lo - count
    start = (os.getpid() * 7919 + int(time.time() * 1000)) % span
    for k in range(0, span, max(1, count // 2)):
        base = lo + (start + k) % span
        if all(_bindable(p) for p in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1 in {lo}-{hi}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_base() -> int:
    """serve.port and the direct-ingress ports above it."""
    return free_range(6)


class Load(threading.Thread):
    """Closed-loop HTTP clients in a background thread; records every response."""

    def __init__(self, url, rows, clients=6, seconds=None, stop_after=None, key=None, sent_registry=None):
        super().__init__(daemon=True)
        self.url, self.rows, self.clients = url, rows, clients
        self.seconds, self.stop_after, self.key = seconds, stop_after, key
        self.results: list[tuple[int, str | None, str]] = []     # (status, version, request id)
        self.sent: set[str] = set()
        self.registry = sent_registry if sent_registry is not None else set()   # shared across loads
        self.answered_at: dict[str, float] = {}     # request id -> when its 200 arrived
        self._halt = threading.Event()

    def stop(self):
        self._halt.set()
        self.join(60)
        return self

    def run(self):
        asyncio.run(self._main())

    async def _main(self):
        import aiohttp
        deadline = time.time() + (self.seconds or 3600)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.clients)) as s:
            async def client(c):
                i = 0
                while not self._halt.is_set() and time.time() < deadline:
                    if self.stop_after and len(self.results) >= self.stop_after:
                        return
                    rid = f"t{c}-{uuid.uuid4().hex[:12]}"
                    self.sent.add(rid)
                    self.registry.add(rid)
                    body = json.dumps(self.rows[(c * 31 + i) % len(self.rows)]).encode()
                    i += 1
                    try:
                        async with s.post(self.url, data=body, headers={"content-type": "application/json",
                                                                        "x-request-id": rid}) as r:
                            payload = await r.read()
                            version = json.loads(payload).get("model_version") if r.status == 200 else \
                                payload[:300].decode(errors="replace")
                            self.results.append((r.status, version, rid))
                            if r.status == 200:
                                self.answered_at[rid] = time.time()
                    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                        self.results.append((599, None, rid))
                        await asyncio.sleep(0.05)
            await asyncio.gather(*[client(c) for c in range(self.clients)])

    @property
    def errors(self):
        return [r for r in self.results if r[0] != 200]

    def versions(self):
        from collections import Counter
        return Counter(v for s, v, _ in self.results if s == 200)
