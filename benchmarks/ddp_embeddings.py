"""Embedding gradients under DDP: all-reduce the dense table gradient, or exchange touched rows?

Usage::

    python benchmarks/ddp_embeddings.py [--procs 2] [--rows 10000,100000,1000000,5000000]
        [--dim 16] [--batch 2048] [--fields 26] [--repeats 20]

(``PYTHONPATH=src`` when recsys_mt is not installed.) The script starts itself under
``torchrun --standalone --nproc_per_node PROCS`` (Gloo, CPU) and, per table size, times on every
rank the two ways of making one embedding table's gradient identical on all ranks after a
batch of ``batch`` rows × ``fields`` Zipf-distributed ids per rank:

* ``dense``: ``all_reduce`` of the full ``[rows, dim]`` gradient, what DDP does with the
  dense gradients recsys_mt uses under ``torchrun``;
* ``sparse``: each rank coalesces its touched rows (``unique`` + ``index_add``), the ranks
  ``all_gather`` (row ids, row gradients) padded to the largest count, and each rank sums them
  into a row-sparse gradient, the exchange a row-sparse optimiser needs.

Output: JSON lines from rank 0, ``{"rows", "dim", "touched_rows", "dense_ms", "sparse_ms",
"dense_mb", "sparse_mb"}`` (median of ``repeats``; MB sent per rank), then
``{"crossover_rows": ...}``, the smallest table size at which the sparse exchange was faster.
Timings are only comparable within one run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--rows", default="10000,100000,1000000,5000000")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--fields", type=int, default=26)
    p.add_argument("--repeats", type=int, default=20)
    return p.parse_args(argv)


def zipf_ids(rows: int, n: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g)
    return ((rows**u - 1).long()).clamp_(0, rows - 1)  # log-uniform: a heavy head


def sparse_exchange(ids, grad_rows, rows: int, dim: int):
    """Row-sparse sum over ranks of per-row gradients: ``(row ids [U], rows [U, dim])``."""
    import torch
    import torch.distributed as dist

    uniq, inverse = torch.unique(ids, return_inverse=True)
    local = torch.zeros(len(uniq), dim).index_add_(0, inverse, grad_rows)
    world = dist.get_world_size()
    count = torch.tensor([len(uniq)])
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    most = int(max(counts))
    pad_ids = torch.full((most,), -1, dtype=torch.long)
    pad_ids[: len(uniq)] = uniq
    pad_vals = torch.zeros(most, dim)
    pad_vals[: len(uniq)] = local
    all_ids = [torch.empty_like(pad_ids) for _ in range(world)]
    all_vals = [torch.empty_like(pad_vals) for _ in range(world)]
    dist.all_gather(all_ids, pad_ids)
    dist.all_gather(all_vals, pad_vals)
    ids_cat, vals_cat = torch.cat(all_ids), torch.cat(all_vals)
    keep = ids_cat >= 0
    merged, inv = torch.unique(ids_cat[keep], return_inverse=True)
    return merged, torch.zeros(len(merged), dim).index_add_(0, inv, vals_cat[keep]), most


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    sizes = [int(r) for r in args.rows.split(",") if r]
    crossover = None
    for rows in sizes:
        n = args.batch * args.fields
        ids = zipf_ids(rows, n, seed=rank)
        grad_rows = torch.randn(n, args.dim)
        dense_t, sparse_t = [], []
        touched = 0
        for _ in range(args.repeats):
            dist.barrier()
            t0 = time.perf_counter()
            dense = torch.zeros(rows, args.dim).index_add_(0, ids, grad_rows)
            dist.all_reduce(dense)
            dense_t.append(time.perf_counter() - t0)
            dist.barrier()
            t0 = time.perf_counter()
            merged, vals, most = sparse_exchange(ids, grad_rows, rows, args.dim)
            sparse_t.append(time.perf_counter() - t0)
            touched = len(merged)
        if rank == 0:
            dense_ms = statistics.median(dense_t) * 1e3
            sparse_ms = statistics.median(sparse_t) * 1e3
            line = {
                "rows": rows,
                "dim": args.dim,
                "touched_rows": touched,
                "dense_ms": round(dense_ms, 3),
                "sparse_ms": round(sparse_ms, 3),
                "dense_mb": round(rows * args.dim * 4 / 2**20, 2),
                "sparse_mb": round(most * (args.dim + 2) * 4 / 2**20, 2),
            }
            print(json.dumps(line), flush=True)
            if crossover is None and sparse_ms < dense_ms:
                crossover = rows
    if rank == 0:
        print(json.dumps({"crossover_rows": crossover, "procs": dist.get_world_size()}), flush=True)
    dist.destroy_process_group()


def main(argv=None) -> None:
    args = parse_args(argv)
    if "LOCAL_RANK" in os.environ:
        worker(args)
        return
    torchrun = Path(sys.executable).parent / "torchrun"
    exe = str(torchrun) if torchrun.exists() else shutil.which("torchrun")
    if exe is None:
        print(json.dumps({"skipped": "torchrun not found"}))
        return
    cmd = [exe, "--standalone", f"--nproc_per_node={args.procs}", __file__]
    cmd += sys.argv[1:] if argv is None else list(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sys.exit(subprocess.run(cmd, env=env).returncode)


if __name__ == "__main__":
    main()
