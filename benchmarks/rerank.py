"""Benchmark of the batched re-rankers against per-user NumPy loops.

Usage::

    PYTHONPATH=src python benchmarks/rerank.py [--users 256] [--loop-users 16] [--repeats 5]
        [--loop-repeats 2] [--candidates 500 1000] [--threads 2] [--wait-idle S]

Prints JSON lines only: one object per (method, impl, N) with the time per user in ms (best of
``--repeats`` runs for the batched code, after one untimed warm-up run, and of ``--loop-repeats``
runs for the loops, like ``timeit``), then one summary object with the speedups.  ``impl`` is

* ``"batched"``: the :mod:`recsys_mt.rerank` re-ranker on all ``users`` at once (float32);
* ``"loop"``: the literal per-user reference of :mod:`recsys_mt.rerank.reference` (MMR with the
  max-similarity against the whole selected set, brute-force ``slogdet`` DPP, xQuAD) on the first
  ``loop_users`` users, time scaled per user;
* ``"loop_fast"``: per-user NumPy loops of the same incremental algorithms as the batched code
  (running-max MMR, Cholesky DPP): the "same algorithm, no batching" baseline.

``agree`` is the fraction of loop-timed users whose loop result equals the batched result
(float32 batched vs float64 reference, so rare near-ties may differ).  On a shared machine pass
``--wait-idle S`` to wait (up to S seconds, Linux only) for an idle CPU before each timing.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch

from recsys_mt.rerank import DPP, MMR, CategoryCoverage
from recsys_mt.rerank import reference as ref

K, DIM, NUM_CATEGORIES = 50, 64, 20


def _cpu_ticks() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]
    return sum(fields) - idle, idle


def wait_idle(max_seconds: float, threshold: float = 0.9) -> None:
    """Wait until two consecutive 0.5 s windows show >= ``threshold`` idle CPU (best effort)."""
    deadline, good = time.monotonic() + max_seconds, 0
    while time.monotonic() < deadline and good < 2:
        a = _cpu_ticks()
        time.sleep(0.5)
        b = _cpu_ticks()
        if a is None or b is None:
            return
        busy, idle = b[0] - a[0], b[1] - a[1]
        good = good + 1 if idle >= threshold * max(busy + idle, 1) else 0


def best_time(
    fn: Callable[[], object], repeats: int, idle_s: float, warmup: bool = True
) -> tuple[float, object]:
    result = fn() if warmup else None
    best = float("inf")
    for _ in range(repeats):
        wait_idle(idle_s)
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def run(n: int, args: argparse.Namespace, gen: torch.Generator) -> dict[str, float]:
    b, lu = args.users, min(args.loop_users, args.users)
    scores = torch.rand(b, n, generator=gen)
    vectors = torch.randn(b, n, DIM, generator=gen)
    categories = torch.randint(0, NUM_CATEGORIES, (b, n), generator=gen)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[:, n - n // 10 :] = torch.rand(b, n // 10, generator=gen) > 0.5  # some padding

    vec, cat = {"vectors": vectors[:lu]}, {"categories": categories[:lu]}
    f32 = {"tol_dtype": np.float32}
    cases = {
        "mmr": (
            MMR(0.7),
            [
                ("loop", ref.mmr_reference, {**vec, "lambda_": 0.7}),
                ("loop_fast", ref.mmr_reference, {**vec, "lambda_": 0.7, "incremental": True}),
            ],
        ),
        "dpp": (
            DPP(0.7),
            [
                ("loop", ref.dpp_reference, {**vec, **f32, "theta": 0.7}),
                (
                    "loop_fast",
                    ref.dpp_reference,
                    {**vec, **f32, "theta": 0.7, "method": "cholesky"},
                ),
            ],
        ),
        "coverage": (
            CategoryCoverage(0.5),
            [("loop", ref.xquad_reference, {**cat, "lambda_": 0.5})],
        ),
    }
    ms: dict[str, float] = {}
    for method, (reranker, loops) in cases.items():

        def batched(reranker=reranker):
            return reranker(scores, K, mask=mask, item_vectors=vectors, categories=categories)

        seconds, out = best_time(batched, args.repeats, args.wait_idle)
        ms[method] = seconds * 1e3 / b
        emit(method, "batched", b, n, ms[method])
        for impl, fn, kwargs in loops:

            def loop(fn=fn, kwargs=kwargs):
                return ref.per_user(fn, scores[:lu], K, mask=mask[:lu], **kwargs)

            seconds, loop_out = best_time(loop, args.loop_repeats, args.wait_idle, warmup=False)
            loop_ms = seconds * 1e3 / lu
            agree = float(np.mean(np.all(loop_out == out[:lu].numpy(), axis=1)))
            emit(method, impl, b, n, loop_ms, timed_users=lu, agree=agree)
            ms[f"{method}_{impl}"] = loop_ms
    return ms


def emit(method: str, impl: str, users: int, n: int, ms: float, **extra: float) -> None:
    row = {"method": method, "impl": impl, "users": users, "candidates": n, "k": K, "d": DIM}
    row["ms_per_user"] = round(ms, 4)
    row.update(extra)
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="batched re-rankers vs per-user loops")
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--loop-users", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-repeats", type=int, default=2)
    parser.add_argument("--candidates", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    speedups: dict[str, float] = {}
    for n in args.candidates:
        ms = run(n, args, gen)
        for key, value in ms.items():
            if "_" in key:  # "<method>_<impl>"
                method = key.split("_", 1)[0]
                speedups[f"{method}_vs_{key.split('_', 1)[1]}@{n}"] = round(value / ms[method], 2)
        speedups[f"dpp_over_mmr@{n}"] = round(ms["dpp"] / ms["mmr"], 2)
    print(json.dumps({"speedups": speedups}), flush=True)


if __name__ == "__main__":
    main()
