"""Id helpers shared by the schema, funnel statistics and serving.

Id columns are canonicalised to int64 or ``str`` values (``_id_kind`` / ``_canonical``) and mapped
to ids by a :class:`_Vocab` (0 missing, 1 OOV, 2.. known values or hash buckets).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .features import NUM_SPECIAL, OOV_ID, PAD_ID

INT64_MAX = np.iinfo(np.int64).max


class SchemaError(ValueError):
    """Input data does not fit the schema (missing column, wrong dtype, bad value, ...)."""


def _id_kind(values: pd.Series | np.ndarray, what: str) -> str:
    """'int' or 'str' for a column of ids; raises on floats that are not whole numbers."""
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "int"
    if pd.api.types.is_integer_dtype(dtype):
        if pd.api.types.is_unsigned_integer_dtype(dtype):
            arr = np.asarray(values)
            if arr.size and arr.max() > INT64_MAX:
                raise SchemaError(
                    f"{what} holds ids above 2^63 - 1 (e.g. {int(arr.max())}), which do not fit "
                    "int64; cast the column to str"
                )
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
            bad = arr[np.mod(arr, 1) != 0][0]
            raise SchemaError(f"{what} holds non-integer float ids (e.g. {bad}); cast it to str")
        if arr.size and np.abs(arr).max() >= 2.0**63:
            raise SchemaError(
                f"{what} holds float ids of magnitude >= 2^63 (e.g. {np.abs(arr).max():.6g}), "
                "beyond int64 (and beyond exact float precision); store the ids as int or str"
            )
        return "int"
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    if inferred in ("mixed-integer", "mixed-integer-float"):
        ints = [v for v in values if isinstance(v, (int, np.integer)) and not isinstance(v, bool)]
        strs = [v for v in values if isinstance(v, str)]
        example = f" (e.g. {ints[0]!r} and {strs[0]!r})" if ints and strs else ""
        raise SchemaError(
            f"{what} mixes numeric and str ids{example}; as str they would merge 1 and '1': "
            "cast the column to one type"
        )
    if inferred == "bytes":
        raise SchemaError(f"{what} holds bytes ids; decode them to str first")
    return "str"


def _canonical(values: pd.Series, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(values, missing_mask)`` with values as int64 or str objects."""
    missing = values.isna().to_numpy()
    if kind == "int":
        filled = values.fillna(0) if missing.any() else values
        return filled.to_numpy().astype(np.int64), missing
    return values.astype(str).to_numpy(dtype=object), missing


def _hash_ids(values: np.ndarray, buckets: int) -> np.ndarray:
    h = pd.util.hash_array(values)  # fixed-key SipHash: same result in every process
    return (h % np.uint64(buckets)).astype(np.int64) + NUM_SPECIAL


class _Vocab:
    """Value → id lookup: 0 missing, 1 OOV, 2.. known values (or hash buckets)."""

    def __init__(self, kind: str, values: list | None = None, buckets: int | None = None):
        self.kind = kind
        self.values = values
        self.buckets = buckets
        self._index = pd.Index(values) if values is not None else None

    @property
    def size(self) -> int:
        n = self.buckets if self.buckets is not None else len(self.values)
        return n + NUM_SPECIAL

    def lookup(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        if self.buckets is not None:
            ids = _hash_ids(values, self.buckets)
        else:
            pos = self._index.get_indexer(values)
            ids = np.where(pos < 0, OOV_ID, pos + NUM_SPECIAL).astype(np.int64)
        ids[missing] = PAD_ID
        return ids

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": self.values, "buckets": self.buckets}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Vocab:
        return cls(d["kind"], d.get("values"), d.get("buckets"))


def _flatten_lists(col: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row lengths ``[N]`` and the concatenated values of a list column."""
    lengths = np.zeros(len(col), dtype=np.int64)
    parts = []
    for i, cell in enumerate(col.to_numpy(dtype=object)):
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            continue
        if isinstance(cell, (str, bytes)) or not hasattr(cell, "__len__"):
            raise SchemaError(
                f"sequence column {name!r} must hold lists / arrays of ids; row {i} holds "
                f"{type(cell).__name__} {cell!r}"
            )
        lengths[i] = len(cell)
        if len(cell):
            parts.append(np.asarray(cell))
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return lengths, flat
