"""Id helpers shared by the schema, funnel statistics and serving.

Id columns are canonicalised to int64 or ``str`` values (``_id_kind`` / ``_canonical``) and mapped
to ids by a :class:`_Vocab` (0 missing, 1 OOV, 2.. known values or hash buckets).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .features import NUM_SPECIAL, OOV_ID, PAD_ID
from .hashing import anonymize, key_check, keyed_buckets

if TYPE_CHECKING:
    from .features import Sequence, Sparse

INT64_MAX = np.iinfo(np.int64).max


class SchemaError(ValueError):
    """Input data does not fit the schema (missing column, wrong dtype, bad value, ...)."""


class OOVWarning(UserWarning):
    """``Schema.transform`` met more out-of-vocabulary ids than ``oov_warn_rate`` allows."""


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
    if inferred not in ("string", "empty", "categorical"):
        _check_scalars(np.asarray(values, dtype=object), what)
    if inferred in ("mixed-integer", "mixed-integer-float"):
        ints = [v for v in values if isinstance(v, (int, np.integer)) and not isinstance(v, bool)]
        strs = [v for v in values if isinstance(v, str)]
        example = f" (e.g. {ints[0]!r} and {strs[0]!r})" if ints and strs else ""
        raise SchemaError(
            f"{what} mixes numeric and str ids{example}; as str they would merge 1 and '1': "
            "cast the column to one type"
        )
    return "str"


_NOT_IDS = (list, tuple, dict, set, frozenset, np.ndarray, pd.Series, bytes, bytearray)


def _check_scalars(values: np.ndarray, what: str, row: int | None = None) -> None:
    """Raise naming the first value that is a container or bytes (ids are ints or strs)."""
    for i, v in enumerate(values):
        if isinstance(v, _NOT_IDS):
            where = f"row {i}" if row is None else f"row {row}, position {i}"
            if isinstance(v, (bytes, bytearray)):
                raise SchemaError(
                    f"{what} holds bytes ids ({_short(v)} at {where}); decode them to str first"
                )
            raise SchemaError(
                f"{what} holds a nested {type(v).__name__} ({_short(v)}) at {where}; ids must be "
                "scalars (int or str)"
            )


def _short(v: Any) -> str:
    text = " ".join(repr(v).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _canonical(values: pd.Series, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(values, missing_mask)`` with values as int64 or str objects."""
    missing = values.isna().to_numpy()
    if kind == "int":  # nullable Int64 / boolean too: NA -> 0, masked as missing
        return values.to_numpy(dtype=np.int64, na_value=0), missing
    return values.astype(str).to_numpy(dtype=object), missing


def _hash_ids(values: np.ndarray, buckets: int) -> np.ndarray:
    h = pd.util.hash_array(values)  # fixed-key SipHash: same result in every process
    return (h % np.uint64(buckets)).astype(np.int64) + NUM_SPECIAL


class _Vocab:
    """Value → id lookup: 0 missing, 1 OOV, 2.. known values (or hash buckets).

    With ``key``, hash buckets are keyed BLAKE2b; with ``anonymized``, ``values`` are keyed
    tokens of the known values and incoming values are hashed with ``key`` before the lookup.
    The key is never part of :meth:`to_dict`, only its check digest.
    """

    def __init__(
        self,
        kind: str,
        values: list | None = None,
        buckets: int | None = None,
        key: bytes | None = None,
        anonymized: bool = False,
    ):
        if anonymized and key is None:
            raise ValueError("an anonymised vocabulary needs its key")
        self.kind = kind
        self.values = values
        self.buckets = buckets
        self.key = key
        self.anonymized = anonymized
        self._index = pd.Index(values) if values is not None else None

    @property
    def size(self) -> int:
        n = self.buckets if self.buckets is not None else len(self.values)
        return n + NUM_SPECIAL

    def lookup(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Ids of canonical values (see ``_canonical``); 0 where ``missing``."""
        ids = np.full(len(values), PAD_ID, dtype=np.int64)
        present = ~missing
        values = values[present]
        if self.buckets is not None:
            if self.key is not None:
                h = keyed_buckets(values, self.key, self.buckets)
                ids[present] = h.astype(np.int64) + NUM_SPECIAL
            else:
                ids[present] = _hash_ids(values, self.buckets)
            return ids
        if self.anonymized:  # hash and look up each distinct value once
            codes, uniques = pd.factorize(values, sort=False)
            pos = self._index.get_indexer(anonymize(uniques, self.key))[codes]
        else:
            pos = self._index.get_indexer(values)
        ids[present] = np.where(pos < 0, OOV_ID, pos + NUM_SPECIAL)
        return ids

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind, "values": self.values, "buckets": self.buckets}
        if self.anonymized:
            d["anonymized"] = True
        if self.key is not None:
            d["key_check"] = key_check(self.key)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], key: bytes | None = None) -> _Vocab:
        """From :meth:`to_dict`; ``key`` must be the feature's key (checked by the schema)."""
        return cls(d["kind"], d.get("values"), d.get("buckets"), key, d.get("anonymized", False))


def _build_vocab(counts: pd.Series, spec: Sparse | Sequence) -> list:
    """Known values from their counts in first-appearance order: those seen ``min_freq`` times,
    the ``max_vocab`` most frequent (ties by first appearance) when there are more."""
    counts = counts[counts >= spec.min_freq]
    if spec.max_vocab is not None and len(counts) > spec.max_vocab:
        counts = counts.iloc[np.argsort(-counts.to_numpy(), kind="stable")[: spec.max_vocab]]
    return counts.index.tolist()


def is_hashed(spec: Sparse | Sequence) -> bool:
    """Whether a feature hashes its values into buckets (no vocabulary to learn)."""
    return getattr(spec, "hash_buckets", None) is not None


def fit_vocab(
    spec: Sparse | Sequence, kind: str, values: np.ndarray, missing: np.ndarray
) -> _Vocab:
    """The vocabulary of a feature from its canonical fit values (hash buckets, keyed tokens of
    the known values when ``anonymize``, or the known values)."""
    counts = None if is_hashed(spec) else pd.Series(values[~missing]).value_counts(sort=False)
    return vocab_from_counts(spec, kind, counts)  # value_counts: first-appearance order


def vocab_from_counts(spec: Sparse | Sequence, kind: str, counts: pd.Series | None) -> _Vocab:
    """:func:`fit_vocab` from the count of every non-missing fit value, indexed by the values in
    first-appearance order (``None`` for a hashed feature)."""
    key = getattr(spec, "hash_key", None)
    if is_hashed(spec):
        return _Vocab(kind, buckets=spec.hash_buckets, key=key)
    known = _build_vocab(counts, spec)
    if getattr(spec, "anonymize", False):
        tokens = anonymize(np.asarray(known, dtype=object), key).tolist()
        return _Vocab(kind, tokens, key=key, anonymized=True)
    return _Vocab(kind, known)


def oov_stats(ids: np.ndarray, missing: np.ndarray) -> tuple[int, float]:
    """Number of out-of-vocabulary ids and their share of the non-missing values."""
    oov = int(np.count_nonzero(ids == OOV_ID))
    seen = int(missing.size - np.count_nonzero(missing))
    return oov, oov / seen if seen else 0.0


def warn_oov(
    rates: dict[str, float], limit: float | None, group_filtered: Iterable[str] = ()
) -> None:
    """One :class:`OOVWarning` naming the features whose OOV share is above ``limit``;
    ``group_filtered``: features whose rare values ``Schema(min_groups=…)`` maps to OOV."""
    high = {k: r for k, r in rates.items() if limit is not None and r > limit}
    if high:
        shares = ", ".join(f"{k} {r:.0%}" for k, r in high.items())
        filtered = [k for k in high if k in set(group_filtered)]
        why = (
            f" Values of {filtered} seen with fewer than Schema(min_groups=…) distinct groups "
            "at fit are OOV too (set min_groups lower or None for small data)."
            if filtered
            else ""
        )
        warnings.warn(
            f"Schema.transform: out-of-vocabulary share above oov_warn_rate={limit:g} for "
            f"feature(s) {list(high)} ({shares}); these values all map to the OOV id 1. New ids, "
            f"or a column encoded differently from the fit frame?{why} Counts are in "
            "frame.meta['oov_counts']; Schema(oov_warn_rate=None) silences this.",
            OOVWarning,
            stacklevel=3,
        )


def pad_sequences(lengths: np.ndarray, flat_ids: np.ndarray, max_len: int) -> np.ndarray:
    """int64 ``[N, max_len]``: the last ``max_len`` ids of each row, left-aligned, 0-padded."""
    n = len(lengths)
    ids = np.zeros((n, max_len), dtype=np.int64)
    if not len(flat_ids):
        return ids
    starts = np.cumsum(lengths) - lengths
    row = np.repeat(np.arange(n), lengths)
    pos = np.arange(len(flat_ids)) - np.repeat(starts, lengths)
    skip = np.repeat(np.maximum(lengths - max_len, 0), lengths)
    keep = pos >= skip
    ids[row[keep], (pos - skip)[keep]] = flat_ids[keep]
    return ids


def _flatten_lists(col: pd.Series, name: str) -> tuple[np.ndarray, pd.Series]:
    """Per-row lengths ``[N]`` and the concatenated values of a list column.

    A cell is a flat list / tuple / 1-d array of scalar ids, or a missing value (NaN / None)
    for an empty list. Anything else raises :class:`SchemaError` naming the column and row.
    """
    what = f"sequence column {name!r}"
    lengths = np.zeros(len(col), dtype=np.int64)
    parts, first_row = [], {}
    for i, cell in enumerate(col.to_numpy(dtype=object)):
        if pd.api.types.is_scalar(cell) and pd.isna(cell):
            continue
        arr = _cell_array(cell, what, i)
        lengths[i] = arr.size
        if arr.size:
            family = {"U": "str", "O": "object"}.get(arr.dtype.kind, "number")
            first_row.setdefault(family, i)
            parts.append(arr)
    if not parts:
        return lengths, pd.Series(np.zeros(0, dtype=np.int64))
    if "number" in first_row and "str" in first_row:
        raise SchemaError(
            f"{what} mixes numeric ids (row {first_row['number']}) and str ids (row "
            f"{first_row['str']}); as str they would merge 1 and '1': use one type"
        )
    if "object" in first_row:
        flat = pd.Series(np.concatenate([p.astype(object) for p in parts]), dtype=object)
        return lengths, flat.infer_objects()
    return lengths, pd.Series(np.concatenate(parts))


def _cell_array(cell: Any, what: str, row: int) -> np.ndarray:
    """One sequence cell as a 1-d array of scalars, or a :class:`SchemaError`."""
    if isinstance(cell, np.ndarray):
        arr = cell
    elif isinstance(cell, (list, tuple)):
        try:
            arr = np.asarray(cell)
        except (ValueError, TypeError):
            arr = np.asarray(cell, dtype=object)  # ragged nested lists: named below
        if arr.dtype.kind == "U" and not all(isinstance(v, str) for v in cell):
            raise SchemaError(
                f"{what} mixes numeric and str ids at row {row} ({_short(cell)}); use one type"
            )
    else:
        raise SchemaError(
            f"{what} must hold lists / arrays of ids (or NaN / None for an empty list); row "
            f"{row} holds {type(cell).__name__} {_short(cell)}"
        )
    if arr.ndim != 1:
        raise SchemaError(
            f"{what} holds a nested list ({_short(cell)}) at row {row}; a cell must be a flat "
            "list of ids"
        )
    if arr.dtype.kind == "O":
        _check_scalars(arr, what, row)
    elif arr.dtype.kind == "S":
        raise SchemaError(
            f"{what} holds bytes ids ({_short(cell)} at row {row}); decode them to str first"
        )
    elif arr.dtype.kind not in "biufU":
        raise SchemaError(f"{what} holds {arr.dtype} values at row {row}; ids must be int or str")
    return arr
