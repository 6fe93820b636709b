"""Training from Parquet vs from memory: throughput and peak memory as the data grows.

Usage::

    python benchmarks/streaming.py [--quick] [--rows 1000000,10000000] [--memory-rows 1000000]
        [--dir DIR] [--threads 2] [--batch-size 2048] [--workers 0]

(``PYTHONPATH=src`` when recsys_mt is not installed; needs ``pyarrow``, the ``parquet`` extra.)

A synthetic three-stage funnel (4 sparse ids with Zipf-like popularity, 3 dense columns, click /
purchase / repurchase labels with learnable signal) is written to Parquet **in chunks** of
250,000 rows (never held in memory whole), once per row count, into ``--dir`` (default: a
temporary folder, removed at the end). The schema is fitted on the first 200,000 rows (the
vocabularies are bounded, so the sample covers them). Each measurement then runs in a **fresh
process**, so that its peak resident memory is its own: one epoch of MMoE (4 experts of
(128, 64), towers (64,), embeddings of 16, lr 1e-3, batch ``--batch-size``) either

* ``"source": "memory"``: the rows read into a DataFrame, ``Schema.transform`` into a
  ``TensorFrame``, ``Trainer.fit`` on it; or
* ``"source": "parquet"``: ``Trainer.fit`` on ``ParquetSource(dir, schema)`` (shuffle buffer
  65,536 rows, ``--workers`` DataLoader workers).

Output: JSON lines on stdout, ``{"source", "rows", "train_samples_per_s", "peak_rss_mb",
"train_s", "workers"}`` (peak RSS of the measuring process, children included, from
``getrusage``), then ``{"check": ..., "value": ..., "target": ..., "ok": ...}`` lines: peak RSS
at the largest Parquet size over the smallest (target ≤ 1.25) and Parquet over in-memory
throughput at ``--memory-rows`` (target ≥ 0.8). ``--quick``: Parquet at 1 M and 10 M rows,
memory at 1 M. The default sizes are the same; pass smaller ``--rows`` for a smoke run.
Timings are only comparable within one run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

CHUNK = 250_000
VOCABS = {"user_id": 200_000, "item_id": 50_000, "category": 200, "brand": 2_000}
FIT_ROWS = 200_000


def log(msg: str) -> None:
    print(f"[streaming] {msg}", file=sys.stderr, flush=True)


def make_chunk(start: int, n: int, seed: int) -> pd.DataFrame:
    """Rows ``start .. start + n`` of the synthetic funnel (a function of seed and start)."""
    rng = np.random.default_rng([seed, start])
    cols: dict[str, np.ndarray] = {}
    logit_c = np.full(n, -1.0)
    for i, (name, size) in enumerate(VOCABS.items()):
        ids = np.minimum((rng.pareto(1.2, n) * size / 20).astype(np.int64), size - 1)
        cols[name] = ids
        effect = np.sin(ids * (0.37 + i)) * 0.8  # a fixed per-id effect
        logit_c += effect
    for j in range(3):
        cols[f"d{j}"] = rng.lognormal(0, 1, n).astype(np.float32)
    logit_c += 0.3 * np.log1p(cols["d0"])
    click = rng.random(n) < 1 / (1 + np.exp(-logit_c))
    logit_b = -0.5 + np.cos(cols["item_id"] * 0.11) - 0.2 * np.log1p(cols["d1"])
    buy = click & (rng.random(n) < 1 / (1 + np.exp(-logit_b)))
    again = buy & (rng.random(n) < 1 / (1 + np.exp(1.0 - np.sin(cols["user_id"] * 0.05))))
    cols.update(click=click.astype(np.int8), buy=buy.astype(np.int8), again=again.astype(np.int8))
    return pd.DataFrame(cols)


def write_parquet(folder: Path, rows: int, seed: int) -> None:
    """``rows`` rows as ``ceil(rows / 1M)`` files of row groups of 65,536 rows, chunk by chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per_file = 1_000_000
    writer, written = None, 0
    while written < rows:
        n = min(CHUNK, rows - written)
        table = pa.Table.from_pandas(make_chunk(written, n, seed), preserve_index=False)
        if writer is None or written % per_file == 0:
            if writer is not None:
                writer.close()
            writer = pq.ParquetWriter(
                folder / f"part-{written // per_file:05d}.parquet", table.schema
            )
        writer.write_table(table, row_group_size=65_536)
        written += n
    if writer is not None:
        writer.close()


def build_schema(seed: int):
    import recsys_mt as rm

    features = [rm.Sparse(name, dim=16) for name in VOCABS]
    features += [rm.Dense(f"d{j}", transform="log1p") for j in range(3)]
    tasks = [
        rm.Task("ctr", label="click"),
        rm.Task("cvr", label="buy", given="ctr"),
        rm.Task("again", label="again", given="cvr"),
    ]
    return rm.Schema(features, tasks=tasks).fit(make_chunk(0, FIT_ROWS, seed))


def measure(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints its JSON line."""
    import torch

    import recsys_mt as rm

    torch.set_num_threads(args.threads)
    schema = build_schema(args.seed)
    folder = Path(args.measure_dir)
    if args.source == "memory":
        import pyarrow.dataset as ds

        frame = ds.dataset(folder, format="parquet").to_table().to_pandas()
        train = schema.transform(frame)
        del frame
    else:
        train = rm.ParquetSource(
            folder,
            schema,
            batch_size=args.batch_size,
            shuffle=True,
            seed=args.seed,
            num_workers=args.workers,
        )
    torch.manual_seed(args.seed)
    model = rm.MultiTaskModel(
        schema, head=rm.MMoE(num_experts=4, expert_dims=(128, 64)), auto_calibrate=None
    )
    trainer = rm.Trainer(
        max_epochs=1,
        batch_size=args.batch_size,
        progress_bar=False,
        num_threads=args.threads,
        seed=args.seed,
        device="cpu",
        log_every_n_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, train)
    train_s = time.perf_counter() - start
    rss = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    print(
        json.dumps(
            {
                "source": args.source,
                "rows": args.rows_measured,
                "train_samples_per_s": round(args.rows_measured / train_s, 1),
                "peak_rss_mb": round(rss / 1024, 1),
                "train_s": round(train_s, 2),
                "workers": args.workers if args.source == "parquet" else 0,
            }
        ),
        flush=True,
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 M and 10 M Parquet rows, 1 M memory")
    p.add_argument("--rows", default="1000000,10000000", help="Parquet row counts")
    p.add_argument("--memory-rows", type=int, default=1_000_000)
    p.add_argument("--dir", default=None, help="where to write the Parquet files")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    # internal: one measurement in a child process
    p.add_argument("--source", choices=("memory", "parquet"), help=argparse.SUPPRESS)
    p.add_argument("--measure-dir", help=argparse.SUPPRESS)
    p.add_argument("--rows-measured", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_child(args: argparse.Namespace, source: str, folder: Path, rows: int) -> dict | None:
    cmd = [sys.executable, __file__, "--source", source, "--measure-dir", str(folder)]
    cmd += ["--rows-measured", str(rows), "--threads", str(args.threads)]
    cmd += ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    cmd += ["--seed", str(args.seed)]
    log(f"{source} at {rows:,} rows")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-2000:] if proc.returncode else "")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        print(json.dumps({"source": source, "rows": rows, "error": proc.returncode}), flush=True)
        return None
    print(lines[-1], flush=True)
    return json.loads(lines[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.source is not None:
        measure(args)
        return
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": "pyarrow is not installed (pip install recsys-mt[parquet])"}))
        return
    sizes = sorted({int(r) for r in args.rows.split(",") if r})
    if args.quick:
        sizes, args.memory_rows = [1_000_000, 10_000_000], 1_000_000
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys_mt_stream_"))
    try:
        folders = {}
        for rows in sorted(set(sizes) | {args.memory_rows}):
            folders[rows] = root / f"rows_{rows}"
            if not folders[rows].exists():
                log(f"writing {rows:,} rows to {folders[rows].name}")
                write_parquet(folders[rows], rows, args.seed)
        memory = run_child(args, "memory", folders[args.memory_rows], args.memory_rows)
        parquet = {rows: run_child(args, "parquet", folders[rows], rows) for rows in sizes}
        small, large = parquet.get(min(sizes)), parquet.get(max(sizes))
        if small and large and len(sizes) > 1:
            ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
            print(
                json.dumps(
                    {
                        "check": f"peak_rss {max(sizes)} / {min(sizes)} rows",
                        "value": round(ratio, 3),
                        "target": "<= 1.25",
                        "ok": ratio <= 1.25,
                    }
                )
            )
        same = parquet.get(args.memory_rows)
        if memory and same:
            ratio = same["train_samples_per_s"] / memory["train_samples_per_s"]
            print(
                json.dumps(
                    {
                        "check": f"parquet / memory throughput at {args.memory_rows} rows",
                        "value": round(ratio, 3),
                        "target": ">= 0.8",
                        "ok": ratio >= 0.8,
                    }
                )
            )
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
