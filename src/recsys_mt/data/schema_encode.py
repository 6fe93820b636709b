"""The in-memory fit and transform of a :class:`~recsys_mt.data.Schema`: learning its vocabularies
and statistics from a DataFrame, and encoding a DataFrame as a :class:`TensorFrame`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from .columns import dense_stats, dense_values
from .features import Sequence
from .frame import TensorFrame
from .funnel_stats import fit_funnel_stats, transform_funnel_stats
from .group_support import supported_features, supported_vocab
from .id_lists import _flatten_lists
from .vectors import fit_vector_stats, vector_tensors
from .vocab import (
    SchemaError,
    _canonical,
    _id_kind,
    _Vocab,
    fit_vocab,
    oov_stats,
    pad_sequences,
)


def fit_frame(schema: Any, df: pd.DataFrame) -> np.ndarray | None:
    """``Schema.fit`` of a DataFrame; returns the leakage-safe FunnelStats values ``[N, C]`` of
    ``df`` (or None)."""
    has_labels = schema._check_df(df, labels="auto")
    vocabs: dict[str, _Vocab] = {}
    filtered = {f.name for f in supported_features(schema)}
    for f in schema.sparse:
        kind = _id_kind(df[f.column], f"column {f.column!r}")
        values, missing = _canonical(df[f.column], kind)
        if f.name in filtered:
            groups = df[schema.group]
            vocabs[f.name] = supported_vocab(f, kind, values, missing, groups, schema.min_groups)
        else:
            vocabs[f.name] = fit_vocab(f, kind, values, missing)
    for f in schema.sequences:
        lengths, flat = _flatten_lists(df[f.column], f.column)
        if f.vocab_from is not None:
            check_seq_kind(f, flat, vocabs[f.vocab_from].kind)
            continue
        kind = _id_kind(flat, f"sequence column {f.column!r}") if len(flat) else "int"
        vocabs[f.name] = fit_vocab(f, kind, *_canonical(flat, kind))
    stats = {f.name: dense_stats(dense_values(df, f, None), f) for f in schema.dense}
    vector_stats = fit_vector_stats(df, schema.vectors)
    if has_labels and not schema.funnel_stats:
        schema._labels(df)  # validation only; fit_funnel_stats validates them itself
    funnel, train_funnel = fit_funnel_stats(schema, df, has_labels)
    schema.vocabularies_ = vocabs
    schema.dense_stats_ = stats
    schema.vector_stats_ = vector_stats
    schema.funnel_stats_ = funnel
    return train_funnel


def check_seq_kind(f: Sequence, flat: pd.Series, kind: str) -> None:
    """``SchemaError`` when a sequence holds ids of another kind than ``kind`` (its own
    vocabulary's, or ``f.vocab_from``'s); elements that are all missing have no kind."""
    if not len(flat) or flat.isna().all():
        return
    got = _id_kind(flat, f"sequence column {f.column!r}")
    if got != kind:
        owner = repr(f.vocab_from) if f.vocab_from else "its vocabulary"
        raise SchemaError(
            f"sequence column {f.column!r} holds {got} ids but {owner} has {kind} ids"
        )


def transform_frame(
    schema: Any, df: pd.DataFrame, labels: bool | str, funnel: np.ndarray | None
) -> TensorFrame:
    """``Schema.transform``; ``funnel`` replaces the FunnelStats values (``fit_transform``)."""
    schema._check_fitted()
    has_labels = schema._check_df(df, labels)
    n = len(df)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {
        "sparse": [f.name for f in schema.sparse],
        "dense": schema.dense_columns,
        "tasks": schema.task_names,
        "texts": {},
        "oov_counts": {},
        "oov_rates": {},
    }

    def count_oov(name: str, ids: np.ndarray, missing: np.ndarray) -> None:
        meta["oov_counts"][name], meta["oov_rates"][name] = oov_stats(ids, missing)

    sparse = np.zeros((n, len(schema.sparse)), dtype=np.int64)
    for j, f in enumerate(schema.sparse):
        vocab = schema.vocabularies_[f.name]
        kind = _id_kind(df[f.column], f"column {f.column!r}")
        if kind != vocab.kind and not df[f.column].isna().all():  # all missing: no kind, ids 0
            raise SchemaError(
                f"column {f.column!r} holds {kind} ids but the schema was fit on {vocab.kind} "
                f"ids (dtype now {df[f.column].dtype}); cast the column"
            )
        values, missing = _canonical(df[f.column], vocab.kind)
        sparse[:, j] = vocab.lookup(values, missing)
        count_oov(f.name, sparse[:, j], missing)
    if schema.sparse:
        tensors["sparse"] = torch.from_numpy(sparse)
    parts = [dense_values(df, f, schema.dense_stats_[f.name])[:, None] for f in schema.dense]
    if schema.funnel_stats:
        parts.append(transform_funnel_stats(schema, df) if funnel is None else funnel)
    if parts:
        tensors["dense"] = torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32))
    for f in schema.sequences:
        vocab = schema.vocabularies_[f.vocab_from or f.name]
        lengths, flat = _flatten_lists(df[f.column], f.column)
        check_seq_kind(f, flat, vocab.kind)
        flat_ids, missing = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        if len(flat):
            flat_c, missing = _canonical(flat, vocab.kind)
            flat_ids = vocab.lookup(flat_c, missing)
        count_oov(f.name, flat_ids, missing)
        tensors[f"seq/{f.name}"] = torch.from_numpy(pad_sequences(lengths, flat_ids, f.max_len))
    for f in schema.texts:
        codes, uniques = pd.factorize(df[f.column].fillna("").astype(str), sort=False)
        tensors[f"text/{f.name}"] = torch.from_numpy(codes.astype(np.int64))
        meta["texts"][f.name] = list(uniques)
    for f in schema.vectors:
        tensors.update(vector_tensors(df, f, (schema.vector_stats_ or {}).get(f.name)))
    if has_labels:
        tensors["labels"] = torch.from_numpy(schema._labels(df))
    if schema.group is not None:
        try:
            codes, _ = pd.factorize(df[schema.group], use_na_sentinel=False)
        except TypeError as e:  # unhashable cells (lists, dicts)
            raise SchemaError(f"group column {schema.group!r}: {e}") from None
        tensors["group"] = torch.from_numpy(codes.astype(np.int64))
    if not tensors:
        tensors["index"] = torch.arange(n)
    return TensorFrame(tensors, meta)
