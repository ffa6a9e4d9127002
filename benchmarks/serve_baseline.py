"""The serving benchmark's baseline: a minimal FastAPI + uvicorn server for one model bundle.

What a competent user would write without Ray: load the bundle once, ``POST /predict`` with one
JSON row object or a list of rows -> ``{"predictions": [...]}``; ``GET /healthz`` -> ok. One uvicorn
worker with uvloop + httptools, log level warning, no access log; the async handler does the
(CPU-bound, short) prediction on the event loop, so there is no thread-pool hop.

``--encoder pandas`` (default) goes rows -> ``pd.DataFrame`` -> ``bundle.predict`` (the pandas
transform); ``--encoder rows`` uses the same fast row encoder as our server
(``mlops_ray.data.rows.RowEncoder``), so the benchmark can report both and keep the comparison honest.

``--nthread`` sets XGBoost's threads; its default (all cores) makes OpenMP threads spin after each
tiny prediction, ~3x the CPU of ``--nthread 1`` per single-row call, which a 2-core box shares with
the load generator.

    python -m benchmarks.serve_baseline BUNDLE_DIR --port P [--encoder pandas|rows] [--nthread N]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request

import pandas as pd
from fastapi import FastAPI, Request   # module level: FastAPI resolves the (string) annotations here
from fastapi.responses import JSONResponse

from benchmarks.common import ROOT

HOST = "127.0.0.1"


def create_app(bundle_dir: str, encoder: str = "pandas", nthread: int | None = None):
    from mlops_ray.registry.bundle import load_bundle, predict_features

    bundle = load_bundle(bundle_dir)
    if nthread is not None:
        bundle.booster.set_param({"nthread": nthread})
    if encoder == "rows":
        from mlops_ray.data.rows import RowEncoder
        enc = RowEncoder(bundle.spec)

        def predict(rows: list[dict]):
            return predict_features(bundle.booster, enc.encode(rows), bundle.spec)
    else:
        def predict(rows: list[dict]):
            return bundle.predict(pd.DataFrame(rows))

    app = FastAPI()

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.post("/predict")
    async def predict_route(request: Request):
        try:
            body = await request.json()
        except ValueError:   # uvicorn would answer 500 and drop the keep-alive connection
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        rows = body if isinstance(body, list) else [body]
        return JSONResponse({"predictions": predict(rows).tolist()})

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_baseline", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle_dir")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--encoder", choices=("pandas", "rows"), default="pandas")
    p.add_argument("--nthread", type=int, help="XGBoost threads (default: xgboost's, all cores)")
    a = p.parse_args(argv)
    import uvicorn
    uvicorn.run(create_app(a.bundle_dir, a.encoder, a.nthread), host=HOST, port=a.port, workers=1, loop="uvloop",
                http="httptools", log_level="warning", access_log=False)
    return 0


def start_baseline(bundle_dir: str, port: int, encoder: str = "pandas", nthread: int | None = None,
                   timeout_s: float = 60.0) -> subprocess.Popen:
    """Start the baseline server in a subprocess and wait until ``GET /healthz`` answers."""
    cmd = [sys.executable, "-m", "benchmarks.serve_baseline", str(bundle_dir), "--port", str(port),
           "--encoder", encoder] + (["--nthread", str(nthread)] if nthread is not None else [])
    proc = subprocess.Popen(cmd, cwd=ROOT)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"baseline server exited with code {proc.returncode} (its stderr is above)")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise TimeoutError(f"baseline server on port {port} not healthy after {timeout_s:.0f} s")
        time.sleep(0.1)


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM (uvicorn shuts down gracefully), SIGKILL if it is still there after ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
