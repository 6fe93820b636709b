"""Load test of the HTTP service: latency at concurrency 8, with one hot swap in the middle.

Usage::

    python benchmarks/serve_load.py [--quick] [--requests 6000] [--concurrency 8]
        [--candidates 200] [--k 10] [--torch-threads 1] [--seed 0]

(``PYTHONPATH=src`` when recsys_mt is not installed; needs the ``serve`` extra.) Trains the
demo's MMoE model for one epoch on the synthetic funnel twice (two seeds: the served model and
its replacement), saves both, starts the service with uvicorn on the loopback address in a
subprocess, and sends a bounded number of ``POST /recommend`` requests (one user, 200 candidate
ids drawn from the 1,000-item catalog, ``k = 10``) from ``--concurrency`` client threads over
keep-alive connections. When half the requests are done, ``POST /admin/reload`` swaps to the
second model. The server is stopped at the end; one JSON line is printed::

    {"concurrency": 8, "requests": …, "errors": …, "p50_ms": …, "p99_ms": …, "rps": …,
     "swap": {"ms": …, "requests": …, "errors": …, "p99_ms": …}, "answers_by_version": {…}}

``errors`` counts non-200 answers and failed connections; ``swap`` covers the requests that
were in flight at any moment of the reload; ``server_cpu_ms_per_request`` is the server
process's CPU time over the measured requests (Linux) and ``users_per_scoring_call`` the mean
size of the batches concurrent requests were scored in. ``--quick`` (2,000 requests) takes
about a minute on an idle 2-core machine.
Latency depends on the machine and its load; compare runs on one otherwise idle machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

TOKEN = "load-test"


def serve(model_dir: str, catalog_path: str, port: int, torch_threads: int) -> None:
    """Server mode (run in the subprocess): uvicorn on 127.0.0.1:``port`` until killed."""
    import pandas as pd
    import uvicorn

    from recsys_mt.serving import create_app

    catalog = pd.read_parquet(catalog_path)
    app = create_app(
        model_dir, catalog, admin_token=TOKEN, max_candidates=1000, torch_threads=torch_threads
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(root: str, seed: int) -> tuple[str, object]:
    """Train and save ``root/v1`` and ``root/v2``; return the catalog path and the data."""
    import torch

    import recsys_mt as rm
    from recsys_mt.data.synthetic import make_funnel_data
    from recsys_mt.demo import build_schema

    data = make_funnel_data(n_impressions=20_000, seed=seed)
    schema = build_schema()
    frame = schema.fit_transform(data.impressions)
    for version, s in (("v1", seed), ("v2", seed + 1)):
        torch.manual_seed(s)
        model = rm.MultiTaskModel(schema)
        rm.Trainer(max_epochs=1, progress_bar=False, device="cpu", seed=s).fit(model, frame)
        model.save_pretrained(os.path.join(root, version))
    catalog_path = os.path.join(root, "catalog.parquet")
    data.items[["item_id", "category", "price"]].to_parquet(catalog_path)
    return catalog_path, data


def bodies(data, n: int, candidates: int, k: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    ids = data.items.item_id.to_numpy()
    users = data.users
    out = []
    for _ in range(n):
        u = users.iloc[int(rng.integers(len(users)))]
        features = {
            "user_id": int(u.user_id),
            "age": None if np.isnan(u.age) else float(u.age),
            "hist_items": [int(i) for i in u.hist_items],
        }
        cand = rng.choice(ids, size=candidates, replace=False).tolist()
        out.append(json.dumps({"users": [{"features": features, "candidates": cand}], "k": k}))
    return [b.encode() for b in out]


def call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None):
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def scoring_stats(port: int) -> dict:
    """The server's ``/health`` scoring counters (a new connection: idle ones get closed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    return json.loads(call(conn, "GET", "/health")[1])["scoring"]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            if call(conn, "GET", "/health")[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {timeout} s")


def load(port: int, payloads: list[bytes], concurrency: int, swap_dir: str) -> dict:
    """Send every payload once from ``concurrency`` threads; swap models halfway."""
    n = len(payloads)
    records: list[tuple[float, float, int, int]] = []  # start, end, status, version
    lock = threading.Lock()
    next_index = [0]
    swap = {}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= n:
                return
            if i == n // 2:
                threading.Thread(target=reload).start()
            t0 = time.perf_counter()
            try:
                status, raw = call(conn, "POST", "/recommend", payloads[i])
                version = json.loads(raw)["model_version"] if status == 200 else 0
            except (OSError, http.client.HTTPException, ValueError):
                status, version = -1, 0
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            t1 = time.perf_counter()
            with lock:
                records.append((t0, t1, status, version))

    def reload() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = json.dumps({"model_dir": swap_dir}).encode()
        swap["start"] = time.perf_counter()
        swap["status"] = call(conn, "POST", "/admin/reload", body)[0]
        swap["end"] = time.perf_counter()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    rec = np.array(records)
    ms = (rec[:, 1] - rec[:, 0]) * 1e3
    ok = rec[:, 2] == 200
    during = (rec[:, 1] >= swap["start"]) & (rec[:, 0] <= swap["end"])
    after = rec[:, 0] > swap["end"]
    versions = {str(int(v)): int((rec[ok, 3] == v).sum()) for v in np.unique(rec[ok, 3])}
    return {
        "concurrency": concurrency,
        "requests": len(rec),
        "errors": int((~ok).sum()),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "rps": round(len(rec) / wall, 1),
        "swap": {
            "status": swap.get("status"),
            "ms": round((swap["end"] - swap["start"]) * 1e3, 1),
            "requests": int(during.sum()),
            "errors": int((~ok & during).sum()),
            "p99_ms": round(float(np.percentile(ms[during], 99)), 1) if during.any() else None,
        },
        "answers_by_version": versions,
        "old_model_after_swap": int((ok & after & (rec[:, 3] == 1)).sum()),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2,000 requests (about a minute)")
    p.add_argument("--requests", type=int, default=6000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--serve", nargs=3, metavar=("MODEL_DIR", "CATALOG", "PORT"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]), args.torch_threads)
        return
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": "fastapi / uvicorn missing (pip install recsys-mt[serve])"}))
        return
    n = 2000 if args.quick else args.requests
    with tempfile.TemporaryDirectory() as root:
        catalog_path, data = prepare(root, args.seed)
        payloads = bodies(data, n + 100, args.candidates, args.k, args.seed)
        port = free_port()
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--serve",
            os.path.join(root, "v1"),
            catalog_path,
            str(port),
            "--torch-threads",
            str(args.torch_threads),
        ]
        proc = subprocess.Popen(cmd)
        try:
            wait_ready(port, proc)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for body in payloads[n:]:  # warm-up, not measured
                call(conn, "POST", "/recommend", body)
            before = scoring_stats(port)
            cpu0 = cpu_seconds(proc.pid)
            line = load(port, payloads[:n], args.concurrency, os.path.join(root, "v2"))
            cpu1 = cpu_seconds(proc.pid)
            after = scoring_stats(port)
            calls = after["calls"] - before["calls"]
            line["users_per_scoring_call"] = round((after["users"] - before["users"]) / calls, 2)
            if cpu0 is not None and cpu1 is not None:  # includes the reload
                line["server_cpu_ms_per_request"] = round((cpu1 - cpu0) / n * 1e3, 2)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
