"""Id dropout matched to the validation rows: train the "unknown value" rows on as many rows
as they will serve.

A temporal split (the usual case for recommendation) sends mostly *new* users to the model:
in MovieLens-100k with an 80 / 10 / 10 split, 85 % of the validation rows and 86 % of the test
rows belong to users with no training row. Every one of them is scored with the user feature's
OOV row, which a uniform ``id_dropout=0.1`` trains on 10 % of the rows, while the known users'
rows fit each user's own row. :func:`matched_dropout_rates` raises each feature's dropout to
the share of validation rows whose value is unseen, so that during training the feature is
unknown about as often as it will be when serving:

``rate_f = clip((v_f − t_f) / (1 − t_f), floor, cap)``

with ``v_f`` the share of validation ids of feature ``f`` that are OOV and ``t_f`` that share in
the training rows (ids that are already OOV there, e.g. rare values a frequency threshold
removed, need no dropout to reach the OOV row). Dropping a known id with probability ``rate``
makes a training row's id unknown with probability ``t + (1 − t) · rate = v``.

From a streaming source the training rows are not in memory: :func:`source_oov_shares` counts
``t_f`` in one pass over the source (summed over the processes under ``torch.distributed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..data.features import OOV_ID, PAD_ID
from ..data.vocab import oov_stats

__all__ = ["MAX_RATE", "matched_dropout_rates", "oov_share", "source_oov_shares"]

MAX_RATE = 0.9
"""Upper bound of a matched rate: a feature keeps its own ids on at least 10 % of the rows."""


def oov_share(ids: Tensor) -> float:
    """Share of the present (non-padding) ids of ``ids`` that are ``OOV_ID`` (0.0 when none):
    :func:`~recsys_mt.data.vocab.oov_stats` of encoded ids, whose missing values are padding."""
    a = ids.detach().cpu().numpy()
    return oov_stats(a, a == PAD_ID)[1]


def source_oov_shares(
    source: Any,
    columns: Mapping[str, tuple[str, int | None]],
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """:func:`oov_share` of each feature over all the rows of a streaming source, in one pass.

    Reads ``source.batches(0, rank=rank, world_size=world_size)`` once. Under
    ``torch.distributed`` (initialised, world size > 1) each process reads its rank's shard and
    the counts are summed over the processes on ``device`` (the CUDA device under NCCL), so
    every process gets the same shares; collective: every process must call it. The global
    random state is left as it was (a ``DataLoader`` of source workers draws from it).

    Args:
        source: a streaming source (``batches(epoch, rank, world_size)``, e.g. a
            :class:`~recsys_mt.data.ParquetSource`).
        columns: ``name -> (batch key, column)``: the ids of a feature are ``batch[key]``
            (``column`` ``None``: a history ``[B, L]``) or ``batch[key][:, column]``.
        device: where the counts are summed over processes.

    Returns:
        ``{name: share}``, equal to :func:`oov_share` of the same rows as one frame.
    """
    names = list(columns)
    counts = torch.zeros(len(names), 2, dtype=torch.int64)  # (OOV ids, present ids)
    rank, world = 0, 1
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
    with torch.random.fork_rng(devices=[]):
        for batch in source.batches(0, rank=rank, world_size=world):
            for i, name in enumerate(names):
                key, col = columns[name]
                ids = batch[key] if col is None else batch[key][:, col]
                counts[i, 0] += int((ids == OOV_ID).sum())
                counts[i, 1] += int((ids != PAD_ID).sum())
    if world > 1:
        summed = counts.to(device)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        counts = summed.cpu()
    return {n: oov / seen if seen else 0.0 for n, (oov, seen) in zip(names, counts.tolist())}


def matched_dropout_rates(
    columns: Mapping[str, tuple[Tensor | float | None, Tensor]],
    floor: float,
    cap: float = MAX_RATE,
) -> dict[str, float]:
    """Dropout rate per feature from its ids in the training and validation rows.

    Args:
        columns: ``name -> (train_ids, val_ids)``: the encoded ids of one feature, any shape
            (``[N]`` for a sparse column, ``[N, L]`` for a history, padding ignored).
            ``train_ids`` may also be the training rows' OOV share itself (a float, e.g. from
            :func:`source_oov_shares`), or ``None``, taken as a share of 0.
        floor: the lowest rate (the encoder's ``id_dropout``).
        cap: the highest rate.

    Returns:
        ``{name: rate}`` with ``floor <= rate <= max(floor, cap)``.
    """
    rates = {}
    for name, (train_ids, val_ids) in columns.items():
        v = oov_share(val_ids)
        if train_ids is None or isinstance(train_ids, (int, float)):
            t = float(train_ids or 0.0)
        else:
            t = oov_share(train_ids)
        matched = (v - t) / (1.0 - t) if t < 1.0 else 0.0
        rates[name] = max(floor, min(cap, matched))
    return rates
