"""``Schema``: feature specs + tasks, fit on a DataFrame, transforming DataFrames to tensors."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..tasks.task import Task, order_tasks
from . import schema_io
from .columns import encode_labels
from .features import Dense, Feature, FunnelStats, Sequence, Sparse, Text, Vector
from .frame import TensorFrame
from .funnel_stats import FunnelTable, funnel_columns, validate_funnel_stats
from .group_support import supported_features
from .hashing import Key
from .schema_encode import check_seq_kind, fit_frame, transform_frame
from .schema_update import SchemaGrowth, update_schema
from .vectors import VectorStats
from .vocab import OOVWarning, SchemaError, _canonical, _id_kind, _Vocab, warn_oov

__all__ = ["OOVWarning", "Schema", "SchemaError"]

FORMAT_VERSION = schema_io.FORMAT_VERSION


# ----------------------------------------------------------------------------- Schema
class Schema:
    """Feature specs and tasks; learns vocabularies and statistics, turns DataFrames to tensors.

    Follows scikit-learn conventions: parameters are stored as given, learned state ends with
    ``_`` (``vocabularies_``, ``dense_stats_``, ``vector_stats_``, ``funnel_stats_``), and every
    input is validated before any state changes. Errors are :class:`SchemaError` (a
    ``ValueError``) naming the column and value. Training rows should be encoded with
    :meth:`fit_transform` (leakage-safe :class:`FunnelStats`), all other rows with
    :meth:`transform`.

    Args:
        features: :class:`Sparse`, :class:`Dense`, :class:`Sequence`, :class:`Text`,
            :class:`Vector` and :class:`FunnelStats` specs.
        tasks: :class:`~recsys_mt.tasks.Task` list; parents may follow children (they are
            ordered), ``given=`` must name a task, and chains must not have cycles.
        group: column grouping rows for GAUC (usually the user id). ``"auto"`` uses a feature
            named ``"user_id"`` if there is one.
        oov_warn_rate: :meth:`transform` emits one :class:`OOVWarning` naming the sparse and
            sequence features whose share of out-of-vocabulary values exceeds this rate
            (``None`` disables it). Counts are in ``frame.meta["oov_counts"]`` either way.
        min_groups: a :class:`Sparse` value (of any feature but the group column's own) gets
            its own id only if the fit rows show it with at least this many distinct groups
            (users); rarer values map to the OOV id. A value seen with one or two users is an
            alias of them, and its embedding would hand their taste to every other user who
            shares it (see ``recsys_mt.data.group_support``). ``None`` or 1 disables it, as
            does ``group=None``. With a ``group`` that is not the user (a request or query id,
            for GAUC per query), set it to suit, or ``None``.

    Secret keys of :class:`Sparse` features (``hash_key``) are never saved: pass them again to
    :meth:`from_json` (``keys=``).

    Example:
        >>> schema = Schema([Sparse("user_id"), Sparse("item_id"), Dense("price", "log1p")],
        ...                 tasks=[Task("ctr", "click"), Task("cvr", "purchase", given="ctr")])
        >>> frame = schema.fit_transform(df)          # doctest: +SKIP
    """

    def __init__(
        self,
        features: list[Feature],
        tasks: list[Task] | None = None,
        group: str | None = "auto",
        oov_warn_rate: float | None = 0.5,
        min_groups: int | None = 10,
    ):
        if oov_warn_rate is not None and (
            not isinstance(oov_warn_rate, numbers.Real)
            or isinstance(oov_warn_rate, bool)
            or not 0 <= oov_warn_rate <= 1
        ):
            raise ValueError(f"oov_warn_rate must be in [0, 1] or None, got {oov_warn_rate!r}")
        if min_groups is not None and (
            not isinstance(min_groups, numbers.Integral)
            or isinstance(min_groups, bool)
            or min_groups < 1
        ):
            raise ValueError(f"min_groups must be an int >= 1 or None, got {min_groups!r}")
        features = list(features)
        if not features:
            raise ValueError("a Schema needs at least one feature")
        names = [f.name for f in features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate feature names: {dup}")
        by_name = {f.name: f for f in features}
        for f in features:
            if isinstance(f, Sequence) and f.vocab_from is not None:
                if not isinstance(by_name.get(f.vocab_from), Sparse):
                    raise ValueError(
                        f"Sequence({f.name!r}) has vocab_from={f.vocab_from!r}, which is not a "
                        f"Sparse feature (features: {names})"
                    )
            if isinstance(f, Text) and f.key is not None:
                if not isinstance(by_name.get(f.key), Sparse):
                    raise ValueError(f"Text({f.name!r}) has key={f.key!r}, not a Sparse feature")
        self.features = features
        self.tasks = order_tasks(list(tasks or []))
        validate_funnel_stats(features, self.tasks)
        if group == "auto":
            group = "user_id" if "user_id" in by_name else None
        self.group = group
        self.oov_warn_rate = None if oov_warn_rate is None else float(oov_warn_rate)
        self.min_groups = None if min_groups is None else int(min_groups)
        self.vocabularies_: dict[str, _Vocab] | None = None
        self.dense_stats_: dict[str, dict[str, float]] | None = None
        self.vector_stats_: dict[str, VectorStats] | None = None
        self.funnel_stats_: dict[str, FunnelTable] | None = None

    # ------------------------------------------------------------------ views
    def _of(self, cls: type) -> list:
        return [f for f in self.features if type(f) is cls]

    @property
    def sparse(self) -> list[Sparse]:
        return self._of(Sparse)

    @property
    def dense(self) -> list[Dense]:
        return self._of(Dense)

    @property
    def funnel_stats(self) -> list[FunnelStats]:
        return self._of(FunnelStats)

    @property
    def dense_columns(self) -> list[str]:
        """Columns of the frame's ``"dense"`` tensor: Dense features, then FunnelStats outputs."""
        return [f.name for f in self.dense] + funnel_columns(self.funnel_stats, self.tasks)

    @property
    def sequences(self) -> list[Sequence]:
        return self._of(Sequence)

    @property
    def texts(self) -> list[Text]:
        return self._of(Text)

    @property
    def vectors(self) -> list[Vector]:
        return self._of(Vector)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature named {name!r}; features: {[f.name for f in self.features]}")

    @property
    def is_fitted(self) -> bool:
        return self.vocabularies_ is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("this Schema is not fitted yet: call fit(df) or fit_transform(df)")

    def vocab_size(self, name: str) -> int:
        """Rows of the id space of a sparse / sequence feature (including ids 0 and 1)."""
        return self._vocab_of(name).size

    def _vocab_of(self, name: str) -> _Vocab:
        self._check_fitted()
        f = self.feature(name)
        shared = f.vocab_from if isinstance(f, Sequence) else None
        return self.vocabularies_[shared or name]

    def vocabulary(self, name: str) -> list | None:
        """Known values of a feature, in id order starting at id 2 (``None`` when hashed or
        anonymised: the schema holds no raw values then; see :meth:`encode_ids`)."""
        self._check_fitted()
        vocab = self.vocabularies_[name]
        return None if vocab.anonymized else vocab.values

    def encode_ids(self, name: str, values: Any) -> np.ndarray:
        """int64 ids of raw values of a sparse or sequence feature, as :meth:`transform` gives
        them (0 missing, 1 OOV); works for hashed, keyed and anonymised features alike."""
        vocab = self._vocab_of(name)
        values = pd.Series(values)
        kind = _id_kind(values, f"ids of {name!r}")
        if kind != vocab.kind and len(values) and not values.isna().all():
            raise SchemaError(f"ids of {name!r} are {kind} ids but the schema has {vocab.kind} ids")
        return vocab.lookup(*_canonical(values, vocab.kind))

    # ------------------------------------------------------------------ validation
    def _label_columns(self) -> list[str]:
        return [t.label for t in self.tasks]

    def _check_df(self, df: Any, labels: bool | str) -> bool:
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
        if len(df) == 0:
            raise SchemaError("the DataFrame is empty (0 rows)")
        needed = list(dict.fromkeys(c for f in self.features for c in f.input_columns))
        if self.group is not None and self.group not in needed:
            needed.append(self.group)
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise SchemaError(f"missing column(s) {missing}; the DataFrame has {list(df.columns)}")
        label_cols = self._label_columns()
        repeated = set(df.columns[df.columns.duplicated()])
        twice = sorted({str(c) for c in needed + label_cols if c in repeated})
        if twice:
            raise SchemaError(f"the DataFrame has several columns named {twice}")
        present = [c for c in label_cols if c in df.columns]
        if labels is True or (labels == "auto" and present):
            absent = [c for c in label_cols if c not in df.columns]
            if absent:
                raise SchemaError(f"missing label column(s) {absent} for tasks {self.task_names}")
            return bool(label_cols)
        return False

    def _labels(self, df: pd.DataFrame) -> np.ndarray:
        return encode_labels(self.tasks, df)

    # ------------------------------------------------------------------ fit / transform
    def fit(self, data: Any, *, progress_bar: bool = True, chunk_rows: int = 65536) -> Schema:
        """Learn vocabularies, dense statistics and funnel statistics from ``data``; returns
        ``self``.

        Args:
            data: the training rows, as one of

                - a pandas DataFrame, fit in memory;
                - a Parquet file, a directory of them (searched recursively for
                  ``*.parquet``) or a list of files and directories (``str`` or
                  ``os.PathLike``), read ``chunk_rows`` rows at a time, only the columns the
                  schema needs;
                - any other iterable of DataFrame chunks (a list, a generator,
                  ``pd.read_csv(path, chunksize=...)``).

                Files and chunks are fit in one pass holding one chunk at a time, with the
                result of fitting their concatenation (vocabularies exactly, dense statistics up
                to float64 rounding); memory grows with the number of distinct ids, not rows
                (``hash_buckets`` features need none); :class:`Vector` statistics stream
                too. :class:`FunnelStats` features raise ``NotImplementedError`` there: fit
                them on a DataFrame. See the "Streaming from Parquet" docs page.
            progress_bar: a tqdm bar of the rows read, on stderr (files and chunks only).
            chunk_rows: rows per chunk read from Parquet files.

        Validates the whole frame (or every chunk) first, labels too if present
        (:class:`FunnelStats` need them); on error nothing changes, and a chunk's error names
        the chunk (or the file and its rows). Do not ``transform`` the same rows afterwards when
        the schema has FunnelStats (their rows would see their own labels): use
        :meth:`fit_transform`, which takes a DataFrame only.
        """
        if isinstance(data, pd.DataFrame):
            self._fit(data)
        else:
            from .streaming_fit import fit_chunks

            fit_chunks(self, data, progress_bar, chunk_rows)
        return self

    def _fit(self, df: pd.DataFrame) -> np.ndarray | None:
        """``fit`` on a DataFrame: :func:`~recsys_mt.data.schema_encode.fit_frame`."""
        return fit_frame(self, df)

    _check_seq_kind = staticmethod(check_seq_kind)

    def transform(self, df: pd.DataFrame, labels: bool | str = "auto") -> TensorFrame:
        """Encode ``df`` as a :class:`TensorFrame`.

        Args:
            df: the rows to encode; needs every feature column (extra columns are ignored).
            labels: ``"auto"`` encodes labels when all label columns are present (and raises
                if only some are), ``True`` requires them, ``False`` skips them.

        Unseen ids map to the OOV id 1, missing ids to 0; ``frame.meta["oov_counts"]`` and
        ``frame.meta["oov_rates"]`` hold, per sparse / sequence feature, the number and share of
        non-missing values that were out of vocabulary, and an :class:`OOVWarning` names the
        features above ``oov_warn_rate``. Raises :class:`SchemaError` on bad input, naming the
        column. :class:`FunnelStats` come from the full training tables (no
        labels needed); a ``UserWarning`` flags the frame they were fit on (target leakage).
        """
        frame = self._transform(df, labels, None)
        filtered = [f.name for f in supported_features(self)]
        warn_oov(frame.meta["oov_rates"], self.oov_warn_rate, filtered)
        return frame

    def _transform(self, df: pd.DataFrame, labels: bool | str, funnel: np.ndarray | None):
        """``transform``: :func:`~recsys_mt.data.schema_encode.transform_frame`."""
        return transform_frame(self, df, labels, funnel)

    def fit_transform(self, df: pd.DataFrame, labels: bool | str = "auto") -> TensorFrame:
        """``fit(df)`` then encode ``df``; use it for the training rows.

        Same as ``fit(df).transform(df)`` except for :class:`FunnelStats`: every row gets
        out-of-fold (or, with ``time_column``, time-ordered) values, so no row sees its label.
        """
        return self._transform(df, labels, self._fit(df))

    def update(self, df: pd.DataFrame) -> tuple[Schema, SchemaGrowth]:
        """A grown copy for a new period: new ids of ``df`` appended to the vocabularies.

        This schema is not modified. Returns ``(new_schema, growth)``; see
        :func:`~recsys_mt.data.schema_update.update_schema` and ``MultiTaskModel.grow``.
        """
        return update_schema(self, df)

    # ------------------------------------------------------------------ persistence
    def _hash_keys(self) -> dict[str, bytes]:
        """Secret keys of the keyed features by name (never saved)."""
        return {f.name: f.hash_key for f in self.sparse if f.hash_key is not None}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe specs and learned state (secret keys excluded)."""
        return schema_io.schema_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], keys: Mapping[str, Key] | Key | None = None) -> Schema:
        """A schema from :meth:`to_dict`, validated field by field (see :meth:`from_json`)."""
        return schema_io.schema_from_dict(cls, d, keys)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """JSON text of the schema (specs and learned state); also written to ``path`` if given.

        Secret ``hash_key`` values are never written, only a check digest per keyed feature;
        anonymised vocabularies hold keyed tokens instead of the raw ids.
        """
        return schema_io.write_json(self, path)

    @classmethod
    def from_json(
        cls, path_or_text: str | os.PathLike, keys: Mapping[str, Key] | Key | None = None
    ) -> Schema:
        """Load from a JSON file path or a JSON string.

        Args:
            path_or_text: a ``schema.json`` path, or its text.
            keys: the secret ``hash_key`` of each keyed :class:`Sparse` feature
                (``{"user_id": key}``), or one key for all of them. Required when the schema has
                keyed features; a missing or wrong key raises :class:`SchemaError`.

        A hand-edited file with wrong types, unknown or missing keys, or duplicate vocabulary
        values raises :class:`SchemaError` naming the field (``vocabularies['item_id'].values
        [7]: duplicate value 'x'``).
        """
        return schema_io.read_json(cls, path_or_text, keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        feats = ", ".join(f"{type(f).__name__}({f.name!r})" for f in self.features)
        tasks = ", ".join(t.name + (f"|{t.given}" if t.given else "") for t in self.tasks)
        state = "fitted" if self.is_fitted else "not fitted"
        return f"Schema([{feats}], tasks=[{tasks}], {state})"
