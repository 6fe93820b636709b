"""The arithmetic of a :class:`~recsys_mt.data.parquet.ParquetSource` epoch, from row counts alone.

The order of the row groups, the contiguous row spans of ranks and workers, the chunks (pieces
of row groups) a worker reads, and how many batches each worker yields before a resume point;
with the checks of the integer arguments these take. No file is opened here.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RowGroup:
    """One row group: ``file`` indexes the source's file list, ``index`` is the row group's
    number inside that file."""

    file: int
    index: int
    rows: int


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of one row group."""

    group: RowGroup
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def check_int(name: str, value: Any, low: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_rank(rank: int, world_size: int) -> None:
    check_int("world_size", world_size, 1)
    if not isinstance(rank, numbers.Integral) or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank!r} is outside world_size {world_size}")


def split(n: int, parts: int, i: int) -> tuple[int, int]:
    """``[start, stop)`` of part ``i`` of ``n`` items cut into ``parts`` contiguous spans whose
    sizes differ by at most one (the first ``n % parts`` spans are one longer)."""
    q, r = divmod(n, parts)
    start = i * q + min(i, r)
    return start, start + q + (1 if i < r else 0)


def worker_span(
    total: int, rank: int, world_size: int, worker: int, workers: int
) -> tuple[int, int]:
    """Rows ``[start, stop)`` of the epoch's virtual sequence that one worker of one rank reads."""
    a, b = split(total, world_size, rank)
    s, e = split(b - a, workers, worker)
    return a + s, a + e


def worker_batch_counts(
    total: int, rank: int, world_size: int, workers: int, batch_size: int
) -> list[int]:
    """Real batches per worker of a rank: every batch is full but each worker's last one."""
    spans = [worker_span(total, rank, world_size, w, workers) for w in range(workers)]
    return [-(-(stop - start) // batch_size) for start, stop in spans]


def resume_point(counts: Sequence[int], start_batch: int) -> tuple[list[int], int]:
    """Where each worker stands at position ``start_batch`` of the round-robin interleaving
    (round ``t`` yields batch ``t`` of each worker that has one, in worker order).

    Returns:
        ``(skips, first)``: how many of its batches each worker yields before that position,
        and the worker the interleaving resumes with (the cycle goes on from there, passing
        over exhausted workers). Computed per block of rounds with the same active workers.
    """
    counts_arr = np.asarray(counts, dtype=np.int64)
    skips = np.zeros_like(counts_arr)
    left, done = int(start_batch), 0
    for level in sorted(set(counts_arr.tolist()) - {0}):
        active = np.flatnonzero(counts_arr > done)
        if (level - done) * len(active) <= left:
            skips[active] += level - done
            left -= (level - done) * len(active)
            done = level
            continue
        full, part = divmod(left, len(active))
        skips[active] += full
        skips[active[:part]] += 1
        return skips.tolist(), int(active[part])
    return skips.tolist(), 0


def epoch_order(groups: Sequence[RowGroup], shuffle: bool, seed: int, epoch: int) -> list[RowGroup]:
    """The epoch's row groups: permuted by a generator seeded with ``(seed, epoch)``."""
    if not shuffle:
        return list(groups)
    perm = np.random.default_rng([seed, epoch]).permutation(len(groups))
    return [groups[i] for i in perm]


def plan_chunks(
    groups: Sequence[RowGroup], start: int, stop: int, buffer: int
) -> list[list[Piece]]:
    """The chunks covering rows ``[start, stop)`` of the sequence ``groups``: whole pieces of
    row groups (sliced at the span's ends), at most ``buffer`` rows per chunk unless one piece
    alone is longer."""
    chunks: list[list[Piece]] = []
    chunk: list[Piece] = []
    size = offset = 0
    for g in groups:
        lo, hi = max(start - offset, 0), min(stop - offset, g.rows)
        offset += g.rows
        if lo >= hi:
            if offset >= stop:
                break
            continue
        piece = Piece(g, lo, hi)
        if chunk and size + piece.rows > buffer:
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(piece)
        size += piece.rows
    if chunk:
        chunks.append(chunk)
    return chunks
