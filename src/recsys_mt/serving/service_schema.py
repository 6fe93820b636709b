"""Request fields of the HTTP service, derived from a model's :class:`~recsys_mt.Schema`.

The user-side fields of a request are the schema's input columns that the catalog does not
hold (the catalog supplies every item-side column). :func:`user_fields` lists them with the
JSON type each feature kind accepts; :func:`request_models` turns that list into pydantic
models (strict types, unknown fields refused); :func:`users_frame` turns validated users into
the DataFrame :meth:`Recommender.recommend <recsys_mt.Recommender.recommend>` takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..data.features import Dense, FunnelStats, Sequence, Sparse, Text, Vector

__all__ = ["UserField", "item_id_type", "request_models", "user_fields", "users_frame"]


@dataclass(frozen=True)
class UserField:
    """One user-side request field.

    Attributes:
        name: the column name (the JSON key under ``features``).
        kind: ``"id"`` (a scalar id), ``"number"``, ``"ids"`` (a list of ids), ``"text"`` or
            ``"vector"``.
        id_type: ``"int"``, ``"str"`` or ``"any"`` for id kinds (``None`` otherwise).
        nullable: ``null`` (or leaving the field out) is accepted.
        dim: the length of a ``"vector"`` field.
    """

    name: str
    kind: str
    id_type: str | None = None
    nullable: bool = False
    dim: int | None = None


def _vocab_kind(schema: Any, name: str) -> str:
    vocab = (schema.vocabularies_ or {}).get(name)
    kind = getattr(vocab, "kind", None)
    return kind if kind in ("int", "str") else "any"


def _field_of(schema: Any, feature: Any, column: str) -> UserField:
    if isinstance(feature, Sparse):
        return UserField(column, "id", _vocab_kind(schema, feature.name))
    if isinstance(feature, Dense):
        return UserField(column, "number", nullable=feature.nan != "error")
    if isinstance(feature, Sequence):
        shared = feature.vocab_from or feature.name
        return UserField(column, "ids", _vocab_kind(schema, shared), nullable=True)
    if isinstance(feature, Text):
        return UserField(column, "text", nullable=True)
    if isinstance(feature, Vector):
        return UserField(column, "vector", nullable=feature.nan == "zero", dim=feature.dim)
    if isinstance(feature, FunnelStats):
        return UserField(column, "id", "any")
    raise TypeError(f"feature {feature.name!r} of kind {type(feature).__name__} cannot be served")


def user_fields(schema: Any, catalog_columns: Iterable[str]) -> tuple[UserField, ...]:
    """The request fields a model needs: every input column of ``schema`` that is not a
    catalog column, in schema order (a column read by two features is listed once)."""
    item_side = set(catalog_columns)
    out: dict[str, UserField] = {}
    for feature in schema.features:
        for column in feature.input_columns:
            if column not in item_side and column not in out:
                out[column] = _field_of(schema, feature, column)
    return tuple(out.values())


def item_id_type(catalog: pd.DataFrame, item_key: str) -> str:
    """``"int"`` or ``"str"``: the JSON type of candidate ids (from the catalog's id column)."""
    values = catalog[item_key]
    if pd.api.types.is_integer_dtype(values.dtype):
        return "int"
    if all(isinstance(v, str) for v in values):
        return "str"
    raise TypeError(f"catalog column {item_key!r} must hold int or str ids, not {values.dtype}")


def _int_or_str(value: Any) -> int | str:
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError("Input should be an integer or a string id")


def _annotation(field: UserField) -> Any:
    from typing import Annotated

    from pydantic import Field, PlainValidator, StrictFloat, StrictInt, StrictStr

    # a strict float accepts JSON integers too; one validator keeps "any" ids to one message
    any_id = Annotated[Any, PlainValidator(_int_or_str)]
    ident = {"int": StrictInt, "str": StrictStr, "any": any_id}
    if field.kind == "id":
        typ = ident[field.id_type or "any"]
    elif field.kind == "number":
        typ = StrictFloat
    elif field.kind == "ids":
        typ = list[ident[field.id_type or "any"]]
    elif field.kind == "text":
        typ = StrictStr
    else:  # vector
        typ = Annotated[list[StrictFloat], Field(min_length=field.dim, max_length=field.dim)]
    return (typ | None, None) if field.nullable else (typ, ...)


def request_models(
    fields: tuple[UserField, ...], id_type: str, max_users: int, max_candidates: int
) -> tuple[type, type]:
    """Pydantic ``(UserFeatures, RecommendRequest)`` models for ``fields``.

    ``RecommendRequest``: ``{"users": [{"features": {...}, "candidates": [ids]}], "k": int}``
    with 1 to ``max_users`` users, 1 to ``max_candidates`` candidates each, ``k >= 1`` and no
    unknown fields at any level.
    """
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, create_model

    strict = ConfigDict(extra="forbid", strict=True)
    features = create_model(
        "UserFeatures",
        __config__=strict,
        **{f.name: _annotation(f) for f in fields},
    )
    item = StrictInt if id_type == "int" else StrictStr

    class UserRequest(BaseModel):
        model_config = strict
        features: features  # type: ignore[valid-type]
        candidates: Annotated[list[item], Field(min_length=1, max_length=max_candidates)]  # type: ignore[valid-type]

    class RecommendRequest(BaseModel):
        model_config = strict
        users: Annotated[list[UserRequest], Field(min_length=1, max_length=max_users)]
        k: Annotated[StrictInt, Field(ge=1)] | None = None

    return features, RecommendRequest


def _is_int64(value: Any) -> bool:
    """An int that fits int64 (larger ids stay Python ints: the schema then names them)."""
    return isinstance(value, int) and -(2**63) <= value < 2**63


def users_frame(fields: tuple[UserField, ...], rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``[B]`` user rows as a DataFrame with the dtypes ``Schema.transform`` expects (numbers
    as float64 with NaN for ``null``, ids as int64 / str, lists kept as cells)."""
    data: dict[str, Any] = {}
    for f in fields:
        values = [row.get(f.name) for row in rows]
        if f.kind == "number":
            data[f.name] = np.array([np.nan if v is None else v for v in values], np.float64)
        elif f.kind == "id" and all(_is_int64(v) for v in values):
            data[f.name] = np.array(values, dtype=np.int64)
        elif f.kind == "ids":  # arrays: Schema.transform takes them without a list scan
            data[f.name] = pd.Series(
                [None if v is None else np.asarray(v) for v in values], dtype=object
            )
        elif f.kind == "vector":
            data[f.name] = pd.Series(
                [None if v is None else np.asarray(v, np.float64) for v in values], dtype=object
            )
        else:
            data[f.name] = pd.Series(values, dtype=object)
    return pd.DataFrame(data, index=pd.RangeIndex(len(rows)))
