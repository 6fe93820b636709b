"""Feature specifications: what each input column is and how it is encoded.

Specs are plain dataclasses holding the parameters exactly as given; everything learned from data
lives in :class:`~recsys_mt.data.schema.Schema` (``vocabularies_``, ``dense_stats_``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

PAD_ID = 0
"""Id of padding / missing values (a learned "missing" row for sparse features)."""
OOV_ID = 1
"""Id of values unseen at ``fit`` time (or rarer than ``min_freq``)."""
NUM_SPECIAL = 2


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"feature name must be a non-empty string, got {name!r}")
    if "/" in name:
        raise ValueError(f"feature name {name!r} must not contain '/'")


@dataclass
class Feature:
    """Base class of the feature specs. ``column`` defaults to ``name``."""

    kind: ClassVar[str] = "feature"
    name: str

    def __post_init__(self) -> None:
        _check_name(self.name)
        if getattr(self, "column", None) is None and hasattr(self, "column"):
            self.column = self.name

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Feature:
        d = dict(d)
        kind = d.pop("kind")
        cls = _KINDS.get(kind)
        if cls is None:
            raise ValueError(f"unknown feature kind {kind!r}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Sparse(Feature):
    """A categorical id column (user id, item id, category, brand, ...).

    Args:
        name: feature name (also the input column unless ``column`` is given).
        dim: embedding dimension.
        min_freq: values seen fewer times at ``fit`` map to the OOV id.
        max_vocab: keep only the most frequent values (ties broken by first appearance).
        hash_buckets: instead of a vocabulary, hash values into this many buckets
            (ids ``2 .. hash_buckets + 1``); use for huge cardinalities. Hashing is stable
            across processes and runs (pandas' fixed-key SipHash of the value).
        column: source column in the DataFrame.

    Ids are int64: 0 = missing (NaN / None), 1 = out of vocabulary, 2.. = known values.
    """

    kind: ClassVar[str] = "sparse"
    dim: int = 16
    min_freq: int = 1
    max_vocab: int | None = None
    hash_buckets: int | None = None
    column: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim < 1:
            raise ValueError(f"Sparse({self.name!r}): dim must be >= 1, got {self.dim}")
        if self.min_freq < 1:
            raise ValueError(f"Sparse({self.name!r}): min_freq must be >= 1, got {self.min_freq}")
        if self.hash_buckets is not None and self.hash_buckets < 1:
            raise ValueError(f"Sparse({self.name!r}): hash_buckets must be >= 1")


@dataclass
class Dense(Feature):
    """A numeric column.

    Args:
        transform: ``"standard"`` (z-score with training mean / std), ``"log1p"`` (``log1p`` then
            z-score; values must be > -1), or ``"none"``.
        nan: policy for missing values: ``"error"`` (raise, naming the column), ``"mean"`` (fill
            with the training mean, i.e. 0 after standardising) or ``"zero"`` (fill the raw
            value 0).
        column: source column in the DataFrame.
    """

    kind: ClassVar[str] = "dense"
    transform: str = "standard"
    nan: str = "error"
    column: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.transform not in ("standard", "log1p", "none"):
            raise ValueError(
                f"Dense({self.name!r}): transform must be 'standard', 'log1p' or 'none', "
                f"got {self.transform!r}"
            )
        if self.nan not in ("error", "mean", "zero"):
            raise ValueError(
                f"Dense({self.name!r}): nan must be 'error', 'mean' or 'zero', got {self.nan!r}"
            )


@dataclass
class Sequence(Feature):
    """A variable-length list of ids per row, e.g. the items a user interacted with.

    Args:
        vocab_from: name of a :class:`Sparse` feature whose vocabulary (and embedding rows)
            this sequence shares, e.g. ``"item_id"``; ``None`` learns its own vocabulary.
        max_len: keep the last ``max_len`` entries (lists are assumed oldest → newest).
        dim: embedding dimension when the vocabulary is its own (ignored with ``vocab_from``).
        min_freq: as for :class:`Sparse`, when the vocabulary is its own.
        max_vocab: see ``min_freq``.
        column: source column; each cell is a list / array of ids, or NaN / None for empty.

    Encoded as int64 ``[N, max_len]``, left-aligned, padded with 0.
    """

    kind: ClassVar[str] = "sequence"
    vocab_from: str | None = None
    max_len: int = 50
    dim: int = 16
    min_freq: int = 1
    max_vocab: int | None = None
    column: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_len < 1:
            raise ValueError(f"Sequence({self.name!r}): max_len must be >= 1")


@dataclass
class Text(Feature):
    """A free-text column (title, description, query, review).

    ``Schema.transform`` stores, per row, an index into the frame's table of distinct texts, so
    a text tower encodes each distinct text once. Missing text (NaN / None) becomes ``""``.

    Args:
        key: name of a :class:`Sparse` feature the text describes (e.g. ``"item_id"``: one text per
            item); ``None`` for row-level text (a query, a review).
        column: source column.
    """

    kind: ClassVar[str] = "text"
    key: str | None = None
    column: str | None = None


_KINDS: dict[str, type[Feature]] = {c.kind: c for c in (Sparse, Dense, Sequence, Text)}
