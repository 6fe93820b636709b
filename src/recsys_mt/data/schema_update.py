"""Growing a fitted schema's vocabularies with the ids of a new period (:func:`update_schema`).

A fitted :class:`~recsys_mt.data.Schema` is never changed here: the update returns a new schema
whose non-hashed vocabularies have the new period's unseen values appended after the known ones,
so every known value keeps its id and a model trained on the old schema stays valid for the ids
it knows (``MultiTaskModel.grow`` adds the embedding rows). Everything else learned at ``fit``
(dense and vector statistics, funnel statistics) is carried over unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .features import Sequence, Sparse
from .group_support import filtered_by_support, group_support, supported_features
from .hashing import anonymize
from .id_lists import _flatten_lists
from .vocab import SchemaError, _canonical, _id_kind, _Vocab, is_hashed

if TYPE_CHECKING:
    from .schema import Schema

__all__ = ["SchemaGrowth", "update_schema"]


@dataclass
class SchemaGrowth:
    """What :func:`update_schema` changed, per vocabulary owner (a :class:`Sparse` feature or a
    :class:`Sequence` with its own vocabulary).

    Attributes:
        old_sizes: id-space size (ids 0 and 1 included) of each vocabulary before the update.
        new_sizes: the same after the update; ids ``old_sizes[n] .. new_sizes[n] - 1`` are new.
        added: number of new ids per vocabulary (0 when nothing new passed ``min_freq``).
        capped: per vocabulary, new values left out because ``max_vocab`` was reached.
        hashed: hashed features (``hash_buckets``): their id space never grows.
    """

    old_sizes: dict[str, int] = field(default_factory=dict)
    new_sizes: dict[str, int] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)
    capped: dict[str, int] = field(default_factory=dict)
    hashed: list[str] = field(default_factory=list)

    @property
    def total_added(self) -> int:
        """Number of new ids over all vocabularies."""
        return sum(self.added.values())

    def new_ids(self, name: str) -> range:
        """The ids vocabulary ``name`` gained (empty when it did not grow)."""
        if name not in self.new_sizes:
            raise KeyError(f"no grown vocabulary named {name!r}; vocabularies: {list(self.added)}")
        return range(self.old_sizes[name], self.new_sizes[name])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (for logs)."""
        return {
            "added": dict(self.added),
            "capped": dict(self.capped),
            "hashed": list(self.hashed),
            "new_sizes": dict(self.new_sizes),
        }


def _owners(schema: Schema) -> list[Sparse | Sequence]:
    """The features that own a vocabulary, in fit order (Sparse, then own-vocabulary Sequence)."""
    return [*schema.sparse, *(f for f in schema.sequences if f.vocab_from is None)]


def _values_of(schema: Schema, df: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Canonical values and missing mask of each vocabulary owner's column, after checking the
    id kind of every id column (sequences sharing a vocabulary too) against the schema."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for f in schema.sparse:
        vocab = schema.vocabularies_[f.name]
        col = df[f.column]
        kind = _id_kind(col, f"column {f.column!r}")
        if kind != vocab.kind and not col.isna().all():
            raise SchemaError(
                f"column {f.column!r} holds {kind} ids but the schema was fit on {vocab.kind} ids "
                f"(dtype now {col.dtype}); cast the column"
            )
        out[f.name] = _canonical(col, vocab.kind)
    for f in schema.sequences:
        vocab = schema.vocabularies_[f.vocab_from or f.name]
        _, flat = _flatten_lists(df[f.column], f.column)
        if len(flat) and not flat.isna().all():  # all missing: no kind, ids 0
            kind = _id_kind(flat, f"sequence column {f.column!r}")
            if kind != vocab.kind:
                raise SchemaError(
                    f"sequence column {f.column!r} holds {kind} ids but the schema has "
                    f"{vocab.kind} ids; cast the column"
                )
        if f.vocab_from is None:
            empty = (np.zeros(0, dtype=object), np.zeros(0, dtype=bool))
            out[f.name] = _canonical(flat, vocab.kind) if len(flat) else empty
    return out


def _grown_vocab(
    spec: Sparse | Sequence,
    vocab: _Vocab,
    values: np.ndarray,
    missing: np.ndarray,
    support: tuple[pd.Series, int] | None = None,
) -> tuple[_Vocab, int]:
    """``(vocab with the new values appended, number left out by max_vocab)``.

    New values are those the vocabulary does not know that occur at least ``min_freq`` times
    in ``values`` (and, with ``support = (groups, k)``, with at least ``k`` distinct groups),
    appended in first-appearance order; with ``max_vocab``, only the most frequent fit in the
    room left (ties by first appearance).
    """
    counts = pd.Series(values[~missing]).value_counts(sort=False)  # first-appearance order
    if support is not None:
        groups, k = support
        counts = filtered_by_support(counts, group_support(values, missing, groups), k)
    counts = counts[counts >= spec.min_freq]
    if not len(counts):
        return vocab, 0
    known = counts.index
    if vocab.anonymized:  # the vocabulary holds keyed tokens: compare tokens
        known = pd.Index(anonymize(counts.index.to_numpy(dtype=object), vocab.key))
    fresh = vocab._index.get_indexer(known) < 0
    counts, known = counts[fresh], known[fresh]
    capped = 0
    if spec.max_vocab is not None:
        room = max(spec.max_vocab - len(vocab.values), 0)
        if len(counts) > room:
            capped = len(counts) - room
            keep = np.sort(np.argsort(-counts.to_numpy(), kind="stable")[:room])
            counts, known = counts.iloc[keep], known[keep]
    if not len(counts):
        return vocab, capped
    new_values = known.tolist() if vocab.anonymized else counts.index.tolist()
    grown = _Vocab(
        vocab.kind, list(vocab.values) + new_values, key=vocab.key, anonymized=vocab.anonymized
    )
    return grown, capped


def update_schema(schema: Schema, df: pd.DataFrame) -> tuple[Schema, SchemaGrowth]:
    """A copy of a fitted ``schema`` whose vocabularies also know the new ids of ``df``.

    For each non-hashed :class:`Sparse` feature and each :class:`Sequence` with its own
    vocabulary, values of ``df`` that the vocabulary does not know and that occur at least
    ``min_freq`` times in ``df`` (Sparse values: with at least ``schema.min_groups`` distinct
    groups of ``df``, as at fit) get the next free ids, in order of first appearance; every known
    value keeps its id. ``max_vocab`` caps the grown vocabulary (the most frequent new values
    fill the room left; the others stay out of vocabulary and are counted in
    :attr:`SchemaGrowth.capped`). As at ``fit``, a :class:`Sequence` with ``vocab_from`` does
    not add values to its owner's vocabulary. Hashed features (``hash_buckets``) never grow.
    Dense, vector and funnel statistics are carried over unchanged (refit the schema, and
    retrain, to renew them).

    Args:
        schema: a fitted schema; it is not modified.
        df: the new period's rows; needs every feature column (labels are not read).

    Returns:
        ``(new_schema, growth)``: the grown copy and a :class:`SchemaGrowth` report.

    Raises:
        RuntimeError: ``schema`` is not fitted.
        SchemaError: missing columns, id columns of another kind than at fit, malformed
            sequence cells; raised before anything is built.
    """
    schema._check_fitted()
    schema._check_df(df, labels=False)
    values = _values_of(schema, df)
    growth = SchemaGrowth()
    grown_vocabs: dict[str, _Vocab] = {}
    filtered = {f.name for f in supported_features(schema)}
    for spec in _owners(schema):
        vocab = schema.vocabularies_[spec.name]
        if is_hashed(spec):
            growth.hashed.append(spec.name)
            continue
        support = (df[schema.group], schema.min_groups) if spec.name in filtered else None
        grown, capped = _grown_vocab(spec, vocab, *values[spec.name], support)
        if grown is not vocab:
            grown_vocabs[spec.name] = grown
        growth.old_sizes[spec.name] = vocab.size
        growth.new_sizes[spec.name] = grown.size
        growth.added[spec.name] = grown.size - vocab.size
        if capped:
            growth.capped[spec.name] = capped
    new = copy.deepcopy(schema)
    new.vocabularies_ = {**new.vocabularies_, **grown_vocabs}
    return new, growth


def is_extension(old: Schema, new: Schema) -> list[str]:
    """Why ``new`` is not ``old`` with grown vocabularies (empty list when it is).

    ``new`` must have the same features, tasks, group and statistics, and each of its
    vocabularies must start with all of ``old``'s values in the same order.
    """
    if not (old.is_fitted and new.is_fitted):
        return ["both schemas must be fitted"]
    da, db = old.to_dict(), new.to_dict()
    why = [f"{k} differ" for k in da if k != "vocabularies" and da[k] != db.get(k)]
    va, vb = old.vocabularies_, new.vocabularies_
    for name in sorted(set(va) | set(vb)):
        a, b = va.get(name), vb.get(name)
        if a is None or b is None:
            why.append(f"vocabulary {name!r} exists in only one schema")
        elif (a.kind, a.buckets, a.anonymized) != (b.kind, b.buckets, b.anonymized):
            why.append(f"vocabulary {name!r} changed kind, hash buckets or anonymisation")
        elif a.values is not None and list(b.values[: len(a.values)]) != list(a.values):
            why.append(
                f"vocabulary {name!r} does not start with the old {len(a.values)} values "
                "(known ids would move)"
            )
    return why
