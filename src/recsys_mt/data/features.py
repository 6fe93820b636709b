"""Feature specifications: what each input column is and how it is encoded.

Specs are plain dataclasses holding the parameters exactly as given; everything learned from data
lives in :class:`~recsys_mt.data.schema.Schema` (``vocabularies_``, ``dense_stats_``,
``vector_stats_``, ``funnel_stats_``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from .hashing import normalize_key

if TYPE_CHECKING:
    from ..tasks.task import Task

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

    @property
    def input_columns(self) -> list[str]:
        """DataFrame columns ``Schema.transform`` reads for this feature."""
        column = getattr(self, "column", None)
        return [column] if column is not None else []

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Feature:
        """The spec of :meth:`to_dict` (validate hand-written dicts with ``Schema.from_dict``,
        which names the offending field)."""
        d = dict(d)
        kind = d.pop("kind", None)
        cls = _KINDS.get(kind)
        if cls is None:
            raise ValueError(f"unknown feature kind {kind!r}; kinds: {sorted(_KINDS)}")
        if d.pop("keyed", False) and d.get("hash_key") is None:
            raise ValueError(
                f"{kind} feature {d.get('name')!r} hashes with a secret hash_key, which is never "
                "stored: pass it (Schema.from_json(..., keys=...))"
            )
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} for a {kind} feature")
        return cls(**d)


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
            across processes and runs: pandas' fixed-key SipHash of the value, or keyed
            BLAKE2b with ``hash_key``.
        column: source column in the DataFrame.
        hash_key: a secret (bytes or str, 1 to 64 bytes) for keyed hashing: with
            ``hash_buckets``, bucket = keyed BLAKE2b of the value modulo ``hash_buckets``, so
            nobody without the key can tell which bucket an id falls in; with ``anonymize``,
            the key of the vocabulary tokens. The key is never written to ``schema.json``
            (only a check digest): pass it again to ``Schema.from_json(..., keys=...)``.
        anonymize: store keyed hashes of the known values in the vocabulary (and
            ``schema.json``) instead of the raw ids; needs ``hash_key``. Ids, and so every
            encoded tensor, are identical to those of the same feature without ``anonymize``.

    Ids are int64: 0 = missing (NaN / None), 1 = out of vocabulary, 2.. = known values. A
    column holds int ids (integer, bool or whole-float dtype, or an object column of ints and
    whole floats) or str ids (strings); a categorical column follows its categories.
    """

    kind: ClassVar[str] = "sparse"
    dim: int = 16
    min_freq: int = 1
    max_vocab: int | None = None
    hash_buckets: int | None = None
    column: str | None = None
    hash_key: bytes | str | None = field(default=None, repr=False)
    anonymize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        who = f"Sparse({self.name!r})"
        if self.dim < 1:
            raise ValueError(f"{who}: dim must be >= 1, got {self.dim}")
        if self.min_freq < 1:
            raise ValueError(f"{who}: min_freq must be >= 1, got {self.min_freq}")
        if self.hash_buckets is not None and self.hash_buckets < 1:
            raise ValueError(f"{who}: hash_buckets must be >= 1")
        self.anonymize = bool(self.anonymize)
        if self.hash_key is not None:
            self.hash_key = normalize_key(self.hash_key, who)
            if self.hash_buckets is None and not self.anonymize:
                raise ValueError(
                    f"{who}: hash_key is used with hash_buckets= or anonymize=True; set one"
                )
        elif self.anonymize:
            raise ValueError(f"{who}: anonymize=True needs a secret hash_key")

    @property
    def keyed(self) -> bool:
        """Whether the feature hashes with a secret key (which ``schema.json`` never holds)."""
        return self.hash_key is not None

    def to_dict(self) -> dict[str, Any]:
        """Spec as JSON-safe dict; ``hash_key`` is replaced by ``"keyed": True`` / ``False``."""
        d = super().to_dict()
        d["keyed"] = d.pop("hash_key") is not None
        return d


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
        column: source column; each cell is a flat list / tuple / 1-d array of scalar ids (int or
            str, one type per column), or NaN / None for an empty list; a missing element
            (None / NaN / NA) is id 0. Int ids stay exact int64: a float id beyond 2^53 (ids
            that went through float64, e.g. ``list<int64>`` with nulls read by plain pandas),
            nested lists, dicts, sets and bytes raise :class:`~recsys_mt.data.SchemaError`
            naming the column and row.

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


@dataclass
class Vector(Feature):
    """A precomputed fixed-length float vector per row (an image or text embedding computed
    offline by any model).

    Args:
        name: feature name (also the input column unless ``column`` is given).
        dim: length of every vector (>= 1).
        normalize: ``None`` (values as given), ``"l2"`` (each vector divided by its L2 norm;
            zero vectors stay zero) or ``"standard"`` (per-dimension z-score with the training
            mean and std, learned at ``fit`` and saved in ``schema.json``).
        nan: policy for a missing cell (None / NaN) or a vector holding NaN: ``"error"``
            (raise, naming the column and row) or ``"zero"`` (encode a zero vector and a
            presence flag of 0, see below). inf is always an error.
        column: source column; each cell a list, tuple or 1-d array of ``dim`` real numbers.
            In Parquet, a ``list`` / ``large_list`` / ``fixed_size_list`` of floats or ints.

    Encoded as float32 ``[N, dim]`` under the frame key ``"vec/<name>"``; with ``nan="zero"``
    also ``"vec_present/<name>"``, float32 ``[N]``: 1 where the row had a vector, 0 where it
    was encoded as zeros. :class:`~recsys_mt.encoders.VectorEncoder` feeds both to the model.
    """

    kind: ClassVar[str] = "vector"
    dim: int
    normalize: str | None = None
    nan: str = "error"
    column: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        who = f"Vector({self.name!r})"
        if not isinstance(self.dim, numbers.Integral) or isinstance(self.dim, bool) or self.dim < 1:
            raise ValueError(f"{who}: dim must be an int >= 1, got {self.dim!r}")
        self.dim = int(self.dim)
        if self.normalize not in (None, "l2", "standard"):
            raise ValueError(
                f"{who}: normalize must be None, 'l2' or 'standard', got {self.normalize!r}"
            )
        if self.nan not in ("error", "zero"):
            raise ValueError(f"{who}: nan must be 'error' or 'zero', got {self.nan!r}")


@dataclass
class FunnelStats(Feature):
    """Leakage-safe funnel statistics (smoothed target encoding) of an entity.

    For each chosen binary task and each value of ``entity`` the schema learns, from the
    training labels, how often the entity reached the task's stage given its parent stage
    (CTR: clicks / impressions; CVR: purchases / clicks; repurchase: repurchases / purchases),
    smoothed towards the global rate. Outputs per task, appended to the frame's ``"dense"``
    tensor after the :class:`Dense` features: ``"<name>.<task>_rate"`` (logit of the smoothed
    rate) and, with ``counts``, ``"<name>.<task>_count"`` (``log1p`` of the entity's exposure at
    the parent stage), both standardised. Training rows get out-of-fold (or time-ordered)
    values from ``Schema.fit_transform``, so no row ever sees its own label; see the
    "Funnel statistics" docs page.

    Args:
        name: feature name; prefix of the output columns.
        entity: id column, or a list of columns for a crossed entity
            (``["user_id", "category"]``). Any id-like column; need not be a :class:`Sparse`.
        tasks: names of binary tasks to compute rates for (default: every binary task).
        smoothing: pseudo-count ``m`` > 0 of the prior: ``rate = (num + m·prior) / (den + m)``.
        folds: number of out-of-fold folds (>= 2) for ``fit_transform``'s training values.
        time_column: if set, ``fit_transform`` gives each training row the statistics of the
            rows with a strictly earlier time value instead of out-of-fold ones. The column
            must be datetime64 (tz-aware too) or numeric: strings would order alphabetically.
        counts: also output the ``log1p`` exposure count per task.
        seed: seed of the random fold assignment.
        unseen_rate: share of training rows (drawn with ``seed``) given the values of an
            entity unseen at fit (the prior rate and count 0), as new items and users get them
            at serving time; without such rows the model never learns what those values mean
            and extrapolates on them.

    Out-of-fold sums cover ``(folds − 1) / folds`` of the training rows; they are scaled by
    ``folds / (folds − 1)`` so that counts (and the weight of the evidence against the prior)
    match the full tables that validation and serving rows see.
    """

    kind: ClassVar[str] = "funnel_stats"
    entity: str | list[str]
    tasks: list[str] | None = None
    smoothing: float = 20.0
    folds: int = 5
    time_column: str | None = None
    counts: bool = True
    seed: int = 0
    unseen_rate: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        who = f"FunnelStats({self.name!r})"
        if not isinstance(self.unseen_rate, numbers.Real) or not 0 <= self.unseen_rate < 1:
            raise ValueError(f"{who}: unseen_rate must be in [0, 1), got {self.unseen_rate!r}")
        self.unseen_rate = float(self.unseen_rate)
        cols = [self.entity] if isinstance(self.entity, str) else list(self.entity)
        if not cols or not all(isinstance(c, str) and c for c in cols):
            raise ValueError(f"{who}: entity must be a column name or a non-empty list of them")
        if len(set(cols)) != len(cols):
            raise ValueError(f"{who}: entity lists a column twice: {cols}")
        self.entity = self.entity if isinstance(self.entity, str) else cols
        if self.tasks is not None:
            self.tasks = [self.tasks] if isinstance(self.tasks, str) else list(self.tasks)
            if not self.tasks or len(set(self.tasks)) != len(self.tasks):
                raise ValueError(f"{who}: tasks must be a non-empty list of distinct task names")
        if not isinstance(self.smoothing, numbers.Real) or not 0 < self.smoothing < math.inf:
            raise ValueError(f"{who}: smoothing must be > 0, got {self.smoothing!r}")
        if not isinstance(self.folds, numbers.Integral) or self.folds < 2:
            raise ValueError(f"{who}: folds must be an int >= 2, got {self.folds!r}")
        if not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"{who}: seed must be an int, got {self.seed!r}")
        self.smoothing, self.folds, self.seed = (
            float(self.smoothing),
            int(self.folds),
            int(self.seed),
        )
        self.counts = bool(self.counts)
        if self.time_column is not None and (
            not isinstance(self.time_column, str) or not self.time_column
        ):
            raise ValueError(f"{who}: time_column must be a column name or None")

    @property
    def entity_columns(self) -> list[str]:
        """The entity's column(s), as a list."""
        return [self.entity] if isinstance(self.entity, str) else list(self.entity)

    @property
    def input_columns(self) -> list[str]:
        return self.entity_columns

    def resolve_tasks(self, tasks: list[Task]) -> list[Task]:
        """The binary tasks to compute rates for: ``self.tasks`` in the given order, or every
        binary task of ``tasks`` in order. Raises ``ValueError`` naming an unknown or regression
        task and listing the binary ones."""
        binary = [t for t in tasks if t.binary]
        if self.tasks is None:
            if not binary:
                raise ValueError(
                    f"FunnelStats({self.name!r}) needs a binary task; the schema's tasks are "
                    f"{[t.name for t in tasks]}"
                )
            return binary
        by_name = {t.name: t for t in tasks}
        for name in self.tasks:
            t = by_name.get(name)
            if t is None or not t.binary:
                why = "is not a task" if t is None else f"is a regression task (loss={t.loss!r})"
                raise ValueError(
                    f"FunnelStats({self.name!r}): task {name!r} {why}; funnel statistics need a "
                    f"binary task, one of {[b.name for b in binary]}"
                )
        return [by_name[name] for name in self.tasks]

    def output_columns(self, task_names: list[str]) -> list[str]:
        """``"<name>.<task>_rate"`` (and ``"<name>.<task>_count"`` with ``counts``) per task."""
        suffixes = ("rate", "count") if self.counts else ("rate",)
        return [f"{self.name}.{t}_{s}" for t in task_names for s in suffixes]


_KINDS: dict[str, type[Feature]] = {
    c.kind: c for c in (Sparse, Dense, Sequence, Text, Vector, FunnelStats)
}
