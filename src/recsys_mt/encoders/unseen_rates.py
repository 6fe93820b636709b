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
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..data.features import PAD_ID
from ..data.vocab import oov_stats

__all__ = ["MAX_RATE", "matched_dropout_rates", "oov_share"]

MAX_RATE = 0.9
"""Upper bound of a matched rate: a feature keeps its own ids on at least 10 % of the rows."""


def oov_share(ids: Tensor) -> float:
    """Share of the present (non-padding) ids of ``ids`` that are ``OOV_ID`` (0.0 when none):
    :func:`~recsys_mt.data.vocab.oov_stats` of encoded ids, whose missing values are padding."""
    a = ids.detach().cpu().numpy()
    return oov_stats(a, a == PAD_ID)[1]


def matched_dropout_rates(
    columns: Mapping[str, tuple[Tensor | None, Tensor]],
    floor: float,
    cap: float = MAX_RATE,
) -> dict[str, float]:
    """Dropout rate per feature from its ids in the training and validation rows.

    Args:
        columns: ``name -> (train_ids, val_ids)``: the encoded ids of one feature, any shape
            (``[N]`` for a sparse column, ``[N, L]`` for a history, padding ignored).
            ``train_ids`` may be ``None`` (a streaming source): its OOV share is then taken as 0.
        floor: the lowest rate (the encoder's ``id_dropout``).
        cap: the highest rate.

    Returns:
        ``{name: rate}`` with ``floor <= rate <= max(floor, cap)``.
    """
    rates = {}
    for name, (train_ids, val_ids) in columns.items():
        v = oov_share(val_ids)
        t = oov_share(train_ids) if train_ids is not None else 0.0
        matched = (v - t) / (1.0 - t) if t < 1.0 else 0.0
        rates[name] = max(floor, min(cap, matched))
    return rates
