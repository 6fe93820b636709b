"""Which encoded tensor slices each input column produces (the layout of ``Schema.transform``).

Every row of a :class:`~recsys_mt.data.TensorFrame` is encoded from that row's cells alone, so a
frame can be assembled from pieces encoded separately: e.g. the user columns of a batch of
users and the item columns of a catalog, gathered per (user, item) pair. :func:`encoded_parts`
says which part of which tensor comes from which input columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .funnel_stats import funnel_columns


@dataclass(frozen=True)
class EncodedPart:
    """One piece of a frame written by ``Schema.transform``.

    Attributes:
        key: the frame key (``"sparse"``, ``"dense"``, ``"seq/<name>"``, ``"text/<name>"``,
            ``"vec/<name>"``, ``"vec_present/<name>"`` or ``"group"``).
        index: the column of a 2-D ``"sparse"`` ``[N, S]`` / ``"dense"`` ``[N, D]`` tensor this
            part is, or ``None`` when the part is the whole tensor.
        inputs: the DataFrame columns the part is computed from (several for a crossed
            :class:`~recsys_mt.data.FunnelStats` entity).
        feature: the name of the feature that writes it (the schema's ``group`` column for
            ``"group"``).
    """

    key: str
    index: int | None
    inputs: tuple[str, ...]
    feature: str


def encoded_parts(schema: Any) -> list[EncodedPart]:
    """Every part of the frame ``schema.transform(df, labels=False)`` returns, with the input
    columns it is computed from, in the frame's own order (sparse columns in ``meta["sparse"]``
    order, dense columns in ``schema.dense_columns`` order, then per-feature tensors).

    Labels are not listed (they are targets, not inputs); neither is the ``"index"`` tensor of a
    schema without features.
    """
    parts = [EncodedPart("sparse", j, (f.column,), f.name) for j, f in enumerate(schema.sparse)]
    parts += [EncodedPart("dense", j, (f.column,), f.name) for j, f in enumerate(schema.dense)]
    j = len(schema.dense)
    for spec in schema.funnel_stats:
        for _ in funnel_columns([spec], schema.tasks):
            parts.append(EncodedPart("dense", j, tuple(spec.entity_columns), spec.name))
            j += 1
    parts += [EncodedPart(f"seq/{f.name}", None, (f.column,), f.name) for f in schema.sequences]
    parts += [EncodedPart(f"text/{f.name}", None, (f.column,), f.name) for f in schema.texts]
    for f in schema.vectors:
        parts.append(EncodedPart(f"vec/{f.name}", None, (f.column,), f.name))
        if f.nan == "zero":
            parts.append(EncodedPart(f"vec_present/{f.name}", None, (f.column,), f.name))
    if schema.group is not None:
        parts.append(EncodedPart("group", None, (schema.group,), schema.group))
    return parts


def encode_rows(schema: Any, df: Any) -> Any:
    """``schema.transform(df, labels=False)`` without the :class:`OOVWarning` (the frame's
    ``meta["oov_rates"]`` still holds the shares), for callers that encode a frame in pieces and
    judge out-of-vocabulary shares over the assembled rows themselves.

    Args:
        schema: a fitted :class:`~recsys_mt.data.Schema`.
        df: the rows, with every feature column.

    Returns:
        The :class:`~recsys_mt.data.TensorFrame` of ``df`` (``[N, ...]`` tensors).
    """
    return schema._transform(df, False, None)
