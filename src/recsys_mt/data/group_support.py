"""Group support of id values: how many distinct groups (users) each value occurs with.

A :class:`~recsys_mt.data.Sparse` value seen with only one or two users is, in effect, an alias
of those users: a 3-digit zip code that one user lives in, an item only one user ever saw. Its
embedding learns *those users' taste*, and at serving it hands that taste to anyone else who
shares the value — a new user in that zip code gets a stranger's preferences. With
``Schema(min_groups=k)`` such values are left out of the vocabulary: they map to the feature's
OOV id, whose row learns the "unknown value" vector (``IDEmbedding(id_dropout=…)``), exactly
as a value seen fewer than ``min_freq`` times does.

The count is of distinct values of the schema's ``group`` column (``"auto"``: the ``user_id``
feature), taken over the fit rows, negatives included; rows whose group is missing do not
count. The group column's own feature, hashed features, features a :class:`~recsys_mt.data.Text` is
keyed on (``Text(key=…)``: the text is looked up by the id) and sequences with their own
vocabulary are not filtered. ``min_freq`` and ``max_vocab`` apply to the values that remain.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .features import Sparse
from .vocab import _Vocab, is_hashed, vocab_from_counts

__all__ = [
    "GroupSupport",
    "filtered_by_support",
    "group_support",
    "supported_features",
    "supported_vocab",
]


def supported_features(schema: Any) -> list[Sparse]:
    """The Sparse features ``schema.min_groups`` filters (none when it is off or has no group):
    all but the group column's own, hashed ones and those a :class:`Text` is keyed on (an
    item's text is looked up by its id, and a rare item needs its text most)."""
    k, group = getattr(schema, "min_groups", None), schema.group
    if k is None or k <= 1 or group is None:
        return []
    keys = {t.key for t in schema.texts if t.key is not None}
    return [
        f for f in schema.sparse if f.column != group and not is_hashed(f) and f.name not in keys
    ]


def group_support(values: np.ndarray, missing: np.ndarray, groups: pd.Series) -> pd.Series:
    """Number of distinct non-missing groups per non-missing value (index: the values).

    Args:
        values: ``[N]`` canonical values of one feature (``_canonical``'s output).
        missing: ``[N]`` bool, True where the value is missing.
        groups: ``[N]`` the group column of the same rows.
    """
    g = groups.to_numpy()
    keep = ~missing & ~pd.isna(g)
    pairs = pd.DataFrame({"v": values[keep], "g": g[keep]})
    return pairs.drop_duplicates().groupby("v", sort=False).size()


def filtered_by_support(counts: pd.Series, support: pd.Series | dict, k: int) -> pd.Series:
    """``counts`` (value → rows, in first-appearance order) without the values seen with fewer
    than ``k`` distinct groups; the order of the rest is kept."""
    sup = pd.Series(support) if isinstance(support, dict) else support
    n = sup.reindex(counts.index).fillna(0).to_numpy()
    return counts[n >= k]


def supported_vocab(
    spec: Sparse, kind: str, values: np.ndarray, missing: np.ndarray, groups: pd.Series, k: int
) -> _Vocab:
    """``fit_vocab`` keeping only the values seen with at least ``k`` distinct groups."""
    counts = pd.Series(values[~missing]).value_counts(sort=False)  # first-appearance order
    counts = filtered_by_support(counts, group_support(values, missing, groups), k)
    return vocab_from_counts(spec, kind, counts)


class GroupSupport:
    """Distinct groups per value over chunks (a streaming fit). A value's groups are kept only
    until there are ``k`` of them; from then on only the value is remembered, so memory is
    bounded by ``k`` groups per value still short of ``k``, plus one entry per value."""

    def __init__(self, k: int):
        self.k = k
        self.partial: dict[Any, set] = {}
        self.full: set = set()

    def add(self, values: np.ndarray, missing: np.ndarray, groups: pd.Series) -> None:
        """One chunk's canonical values, missing mask and group column."""
        g = groups.to_numpy()
        keep = ~missing & ~pd.isna(g)
        v = pd.Series(values[keep])
        if self.full:
            fresh = ~v.isin(self.full).to_numpy()
            v, g = v[fresh], g[keep][fresh]
        else:
            g = g[keep]
        pairs = pd.DataFrame({"v": v.to_numpy(), "g": g}).drop_duplicates()
        partial, k = self.partial, self.k
        for value, members in pairs.groupby("v", sort=False)["g"]:
            have = partial.setdefault(value, set())
            have.update(members.tolist())
            if len(have) >= k:
                del partial[value]
                self.full.add(value)

    def support(self) -> dict[Any, int]:
        """Value → distinct groups seen (``k`` for every value that reached ``k``)."""
        out = {v: len(s) for v, s in self.partial.items()}
        out.update(dict.fromkeys(self.full, self.k))
        return out
