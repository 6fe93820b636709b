"""Id helpers shared by the schema, funnel statistics and serving.

Id columns are canonicalised to int64 or ``str`` values (``_id_kind`` / ``_canonical``) and mapped
to ids by a :class:`_Vocab` (0 missing, 1 OOV, 2.. known values or hash buckets).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
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


def _id_kind(values: pd.Series | pd.Index | np.ndarray, what: str, unit: str = "row") -> str:
    """'int' or 'str' for a column of ids; raises on floats that are not whole numbers, ids
    beyond int64 and numbers mixed with strings. An object column is int ids when its values
    are numbers (ints, whole floats), str ids otherwise; a categorical follows its categories."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return _id_kind(dtype.categories, f"{what} (its categories)", unit="category")
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
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return "str"
    arr = np.asarray(values, dtype=object)
    _check_scalars(arr, what)
    numbers = _object_ids(arr, what, lambda i: f"{unit} {i}")
    return "str" if numbers is None else "int"


MAX_EXACT_FLOAT = 2**53
"""float64 holds every integer up to this magnitude, and not every one beyond."""

_NUMBERS = (int, float, np.integer, np.floating, np.bool_)


def _object_ids(
    values: np.ndarray, what: str, at: Callable[[int], str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(int64 ids, missing mask)`` of an object array of scalar ids holding numbers, or
    ``None`` when it holds none (str ids: strings, or other scalars read as strings).

    Ints and whole floats are ids; missing values (None, NaN, NA) are masked. Raises naming the
    value and ``at(i)`` (its place) for numbers beside other values, for floats that are not
    whole or beyond 2^53, and for ints beyond int64.
    """
    missing = np.asarray(pd.isna(values), dtype=bool)
    if pd.api.types.infer_dtype(values, skipna=True) in ("integer", "boolean"):
        number, floats = ~missing, np.zeros(len(values), dtype=bool)  # ints only: no scan
    else:
        number = ~missing & np.fromiter(
            (isinstance(v, _NUMBERS) for v in values), bool, len(values)
        )
        floats = number & np.fromiter(
            (isinstance(v, (float, np.floating)) for v in values), bool, len(values)
        )
    if not number.any():
        return None
    other = ~(number | missing)
    if other.any():
        i, j = int(np.argmax(number)), int(np.argmax(other))
        v = values[j]
        held = "str" if isinstance(v, str) else type(v).__name__
        raise SchemaError(
            f"{what} mixes numeric and {held} ids (e.g. {_short(values[i])} at {at(i)} and "
            f"{_short(v)} at {at(j)}); as str they would merge 1 and '1': cast them to one type"
        )
    ids = np.zeros(len(values), dtype=np.int64)
    if floats.any():
        where = np.flatnonzero(floats)
        ids[floats], _ = _exact_ints(
            values[floats].astype(np.float64), what, lambda k: at(int(where[k]))
        )
    ints = number & ~floats
    if ints.any():
        sub = values[ints]
        for v in (max(sub), min(sub)):
            if not -INT64_MAX - 1 <= v <= INT64_MAX:
                k = int(np.flatnonzero(ints)[next(k for k, u in enumerate(sub) if u == v)])
                raise SchemaError(
                    f"{what} holds the id {int(v)} at {at(k)}, beyond int64 "
                    "(-2^63 .. 2^63 - 1); cast the ids to str"
                )
        ids[ints] = sub.astype(np.int64)
    return ids, missing


def _exact_ints(
    values: np.ndarray, what: str, at: Callable[[int], str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(int64 ids, missing mask)`` of a bool, int, uint or float array of ids (NaN missing).

    Raises naming the value and ``at(i)`` where an id cannot stay exact: uints above 2^63 - 1,
    floats that are not whole, floats beyond 2^53 (where float64 merges neighbouring ints:
    2^60 + 1 reads as 2^60, so the ids may already have been merged).
    """
    none = np.zeros(len(values), dtype=bool)
    kind = values.dtype.kind
    if kind in "bi":
        return values.astype(np.int64, copy=False), none
    if kind == "u":
        big = values > INT64_MAX
        if big.any():
            i = int(np.argmax(big))
            raise SchemaError(
                f"{what} holds ids above 2^63 - 1 (e.g. {int(values[i])} at {at(i)}), which do "
                "not fit int64; cast the ids to str"
            )
        return values.astype(np.int64), none
    if kind != "f":
        raise SchemaError(f"{what} holds {values.dtype} values; ids must be int or str")
    missing = np.isnan(values)
    x = np.where(missing, 0.0, values)
    bad = np.mod(x, 1) != 0
    if bad.any():
        i = int(np.argmax(bad))
        raise SchemaError(
            f"{what} holds non-integer float ids (e.g. {values[i]} at {at(i)}); cast it to str"
        )
    big = np.abs(x) > MAX_EXACT_FLOAT
    if big.any():
        i = int(np.argmax(big))
        raise SchemaError(
            f"{what} holds the float id {values[i]:.0f} at {at(i)}, beyond 2^53 where float64 "
            "cannot hold every integer (2^60 + 1 reads as 2^60, so ids may already be merged); "
            "keep the ids int64, with None for a missing element, or str"
        )
    return x.astype(np.int64), missing


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
    if kind == "int" and isinstance(values.dtype, pd.CategoricalDtype):
        categories, _ = _canonical(pd.Series(values.dtype.categories), "int")
        codes = values.cat.codes.to_numpy().astype(np.int64)
        return np.append(categories, 0)[np.where(codes >= 0, codes, len(categories))], missing
    if kind == "int":  # nullable Int64 / boolean and object ints too: NA -> 0, masked
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
