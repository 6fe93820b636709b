"""Batching by index slices, with seeded shuffling and rank sharding."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .frame import TensorFrame


class _Position:
    """Rank shard, device and the epoch / first batch to iterate (shared by the loaders)."""

    def _place(self, rank: int, world_size: int, device: torch.device | str | None) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch ``epoch``'s order from batch ``start_batch`` on (a resumed epoch)."""
        self.epoch = epoch
        self.start_batch = start_batch


class BatchLoader(_Position):
    """Iterate over a :class:`TensorFrame` in batches of index slices.

    No per-row ``__getitem__`` and no collate: each batch is one ``index_select`` per column
    (a view when unshuffled). Shuffling uses a generator seeded with ``seed + epoch``, so epoch
    ``e`` has the same order in an uninterrupted and in a resumed run. With ``world_size > 1``
    each rank takes every ``world_size``-th row of the (shuffled) order, so every row is seen
    exactly once per epoch across the ranks; all ranks get the same number of batches, a rank
    whose share ends a batch early getting an empty (0-row) batch, as
    :class:`~recsys_mt.data.ParquetSource` does (the trainer makes it a zero-gradient step).
    With ``drop_last`` every rank takes ``len(frame) // world_size`` rows in full batches.

    Args:
        frame: the data.
        batch_size: rows per batch (per rank).
        shuffle: reshuffle every epoch (call :meth:`set_epoch`, as the Trainer does).
        seed: base seed of the shuffle.
        drop_last: drop the last incomplete batch.
        rank: shard for distributed data parallel training.
        world_size: see ``rank``.
        device: move each batch here (use ``frame.to(device)`` once instead when it fits).
    """

    def __init__(
        self,
        frame: TensorFrame,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._place(rank, world_size, device)
        if len(frame) == 0:
            raise ValueError("cannot batch an empty frame")
        self.frame = frame
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last

    def _rows_per_rank(self, rank: int | None = None) -> int:
        """Rows of ``rank`` (default: this rank) per epoch."""
        n, w = len(self.frame), self.world_size
        if w == 1:
            return n
        if self.drop_last:
            return n // w
        rank = self.rank if rank is None else rank
        return (n - rank + w - 1) // w  # every w-th row from position ``rank``

    def __len__(self) -> int:
        n = self._rows_per_rank(0)  # rank 0 has the most rows
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> Tensor | None:
        """This rank's row order for the current epoch (``None``: natural order, one shard)."""
        n = len(self.frame)
        if not self.shuffle and self.world_size == 1:
            return None
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        per = self._rows_per_rank()
        return perm[self.rank :: self.world_size][:per].to(self.frame.device)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = self.order()
        n = self._rows_per_rank()
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        starts = list(range(self.start_batch * self.batch_size, stop, self.batch_size))
        padding = len(self) - self.start_batch - len(starts)  # a shorter rank's empty batches
        starts += [stop] * max(padding, 0)
        for start in starts:
            end = min(start + self.batch_size, stop)
            if order is None:
                batch = self.frame.take(slice(start, end))
            else:
                batch = self.frame.take(order[start:end])
            if self.device is not None:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            yield batch


class SourceLoader(_Position):
    """A streaming source (such as :class:`~recsys_mt.data.ParquetSource`) seen as a
    :class:`BatchLoader`: ``set_epoch``, ``len`` (batches per rank, equal on every rank) and
    iteration over this rank's batches, moved to ``device``.

    The source must provide ``batches(epoch, rank, world_size, start_batch) -> Iterator[dict]``
    and ``num_batches(rank, world_size) -> int``; ranks whose share ends early get empty
    (0-row) batches, so that every rank takes the same number of steps.
    """

    def __init__(
        self,
        source: object,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ):
        missing = [m for m in ("batches", "num_batches") if not callable(getattr(source, m, None))]
        if missing:
            raise TypeError(f"{type(source).__name__} is not a streaming source: no {missing}")
        self._place(rank, world_size, device)
        self.source = source

    def __len__(self) -> int:
        return int(self.source.num_batches(rank=self.rank, world_size=self.world_size))

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for batch in self.source.batches(
            self.epoch, rank=self.rank, world_size=self.world_size, start_batch=self.start_batch
        ):
            if self.device is not None:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            yield batch


def is_source(data: object) -> bool:
    """True for streaming sources (``batches`` and ``num_batches`` methods), False for frames."""
    return callable(getattr(data, "batches", None)) and callable(getattr(data, "num_batches", None))
