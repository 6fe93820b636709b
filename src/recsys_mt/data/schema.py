"""``Schema``: feature specs + tasks, fit on a DataFrame, transforming DataFrames to tensors."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..tasks.task import Task, order_tasks
from .features import Dense, Feature, FunnelStats, Sequence, Sparse, Text
from .frame import TensorFrame
from .funnel_stats import (
    FunnelTable,
    fit_funnel_stats,
    funnel_columns,
    transform_funnel_stats,
    validate_funnel_stats,
)
from .vocab import SchemaError, _canonical, _flatten_lists, _id_kind, _Vocab

FORMAT_VERSION = 1


def _build_vocab(values: np.ndarray, spec: Sparse | Sequence) -> list:
    counts = pd.Series(values).value_counts(sort=False)  # first-appearance order
    counts = counts[counts >= spec.min_freq]
    if spec.max_vocab is not None and len(counts) > spec.max_vocab:
        counts = counts.iloc[np.argsort(-counts.to_numpy(), kind="stable")[: spec.max_vocab]]
    return counts.index.tolist()


# ----------------------------------------------------------------------------- Schema
class Schema:
    """Feature specs and tasks; learns vocabularies and statistics, turns DataFrames to tensors.

    Follows scikit-learn conventions: parameters are stored as given, learned state ends with
    ``_`` (``vocabularies_``, ``dense_stats_``, ``funnel_stats_``), and every input is validated
    before any state changes. Errors are :class:`SchemaError` (a ``ValueError``) naming the
    column and value. Training rows should be encoded with :meth:`fit_transform` (leakage-safe
    :class:`FunnelStats`), all other rows with :meth:`transform`.

    Args:
        features: :class:`Sparse`, :class:`Dense`, :class:`Sequence`, :class:`Text` and
            :class:`FunnelStats` specs.
        tasks: :class:`~recsys_mt.tasks.Task` list; parents may follow children (they are
            ordered), ``given=`` must name a task, and chains must not have cycles.
        group: column grouping rows for GAUC (usually the user id). ``"auto"`` uses a feature
            named ``"user_id"`` if there is one.

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
    ):
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
                if by_name[f.vocab_from].hash_buckets is not None:
                    pass  # hashing works for sequences too: same buckets
            if isinstance(f, Text) and f.key is not None:
                if not isinstance(by_name.get(f.key), Sparse):
                    raise ValueError(f"Text({f.name!r}) has key={f.key!r}, not a Sparse feature")
        self.features = features
        self.tasks = order_tasks(list(tasks or []))
        validate_funnel_stats(features, self.tasks)
        if group == "auto":
            group = "user_id" if "user_id" in by_name else None
        self.group = group
        self.vocabularies_: dict[str, _Vocab] | None = None
        self.dense_stats_: dict[str, dict[str, float]] | None = None
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
        self._check_fitted()
        f = self.feature(name)
        key = f.vocab_from if isinstance(f, Sequence) and f.vocab_from else name
        return self.vocabularies_[key].size

    def vocabulary(self, name: str) -> list | None:
        """Known values of a feature, in id order starting at id 2 (``None`` when hashed)."""
        self._check_fitted()
        return self.vocabularies_[name].values

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
        present = [c for c in label_cols if c in df.columns]
        if labels is True or (labels == "auto" and present):
            absent = [c for c in label_cols if c not in df.columns]
            if absent:
                raise SchemaError(f"missing label column(s) {absent} for tasks {self.task_names}")
            return bool(label_cols)
        return False

    def _dense_values(self, df: pd.DataFrame, f: Dense, stats: dict[str, float] | None):
        col = df[f.column]
        if not (pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype)):
            raise SchemaError(f"dense column {f.column!r} has dtype {col.dtype}; expected numbers")
        x = col.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(x).any():
            raise SchemaError(
                f"dense column {f.column!r} holds inf at row {int(np.isinf(x).argmax())}"
            )
        nan = np.isnan(x)
        if nan.any() and f.nan == "error":
            raise SchemaError(
                f"dense column {f.column!r} holds NaN at row {int(nan.argmax())} "
                f"({int(nan.sum())} rows); set Dense({f.name!r}, nan='mean' or 'zero') to fill"
            )
        if f.nan == "zero":
            x = np.where(nan, 0.0, x)
        if f.transform == "log1p":
            bad = ~np.isnan(x) & (x <= -1)
            if bad.any():
                raise SchemaError(
                    f"dense column {f.column!r} needs values > -1 for log1p; row "
                    f"{int(bad.argmax())} holds {x[bad.argmax()]}"
                )
            x = np.log1p(x)
        if stats is None:
            return x
        x = (x - stats["mean"]) / stats["std"]
        # 'mean' policy: the training mean of the encoded values (0 after standardising; the raw
        # mean with transform="none"; schemas saved before "fill" existed used 0)
        return np.where(np.isnan(x), stats.get("fill", 0.0), x)

    def _labels(self, df: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(df), len(self.tasks)), dtype=np.float32)
        by_name = {t.name: i for i, t in enumerate(self.tasks)}
        for j, t in enumerate(self.tasks):
            col = df[t.label]
            if not (
                pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype)
            ):
                raise SchemaError(
                    f"label column {t.label!r} (task {t.name!r}) has dtype {col.dtype}"
                )
            y = col.to_numpy(dtype=np.float64, na_value=np.nan)
            if np.isinf(y).any():
                raise SchemaError(f"label column {t.label!r} holds inf")
            nan = np.isnan(y)
            if t.given is not None:
                parent = out[:, by_name[t.given]]
                observed = parent == 1
                if (nan & observed).any():
                    r = int((nan & observed).argmax())
                    raise SchemaError(
                        f"label column {t.label!r} (task {t.name!r}) is NaN at row {r} where its "
                        f"parent task {t.given!r} is 1"
                    )
                y = np.where(nan, 0.0, y)
            elif nan.any():
                raise SchemaError(
                    f"label column {t.label!r} (task {t.name!r}) holds NaN at row "
                    f"{int(nan.argmax())} ({int(nan.sum())} rows)"
                )
            if t.binary:
                bad = (y != 0) & (y != 1)
                if bad.any():
                    vals = sorted(set(np.unique(y[bad]).tolist()))[:5]
                    raise SchemaError(
                        f"label column {t.label!r} of binary task {t.name!r} must hold 0/1; found "
                        f"{vals} (e.g. row {int(bad.argmax())})"
                    )
                if t.given is not None:
                    leak = (y == 1) & (out[:, by_name[t.given]] == 0)
                    if leak.any():
                        raise SchemaError(
                            f"label {t.label!r} (task {t.name!r}) is 1 at row {int(leak.argmax())} "
                            f"where its parent task {t.given!r} is 0 ({int(leak.sum())} rows); a "
                            "funnel label can only be 1 after its parent"
                        )
            out[:, j] = y
        return out

    # ------------------------------------------------------------------ fit / transform
    def fit(self, df: pd.DataFrame) -> Schema:
        """Learn vocabularies, dense statistics and funnel statistics from ``df``; returns ``self``.

        Validates the whole frame first (labels too, if present; :class:`FunnelStats` need them);
        on error nothing changes. Do not ``transform`` the same rows afterwards when the schema
        has FunnelStats (their rows would see their own labels): use :meth:`fit_transform`.
        """
        self._fit(df)
        return self

    def _fit(self, df: pd.DataFrame) -> np.ndarray | None:
        """``fit``; returns the leakage-safe FunnelStats values ``[N, C]`` of ``df`` (or None)."""
        has_labels = self._check_df(df, labels="auto")
        vocabs: dict[str, _Vocab] = {}
        for f in self.sparse:
            kind = _id_kind(df[f.column], f"column {f.column!r}")
            values, missing = _canonical(df[f.column], kind)
            if f.hash_buckets is not None:
                vocabs[f.name] = _Vocab(kind, buckets=f.hash_buckets)
            else:
                vocabs[f.name] = _Vocab(kind, _build_vocab(values[~missing], f))
        for f in self.sequences:
            lengths, flat = _flatten_lists(df[f.column], f.column)
            if f.vocab_from is not None:
                self._check_seq_kind(f, flat, vocabs[f.vocab_from].kind)
                continue
            kind = (
                _id_kind(pd.Series(flat), f"sequence column {f.column!r}") if flat.size else "int"
            )
            flat_c, missing = _canonical(pd.Series(flat), kind)
            vocabs[f.name] = _Vocab(kind, _build_vocab(flat_c[~missing], f))
        stats = {}
        for f in self.dense:
            x = self._dense_values(df, f, None)
            seen = (~np.isnan(x)).any()
            if f.transform == "none":
                stats[f.name] = {
                    "mean": 0.0,
                    "std": 1.0,
                    "fill": float(np.nanmean(x)) if seen else 0.0,
                }
            else:
                mean = float(np.nanmean(x)) if seen else 0.0
                std = float(np.nanstd(x)) if seen else 1.0
                stats[f.name] = {"mean": mean, "std": std if std > 1e-12 else 1.0, "fill": 0.0}
        if has_labels and not self.funnel_stats:
            self._labels(df)  # validation only; fit_funnel_stats validates them itself
        funnel, train_funnel = fit_funnel_stats(self, df, has_labels)
        self.vocabularies_ = vocabs
        self.dense_stats_ = stats
        self.funnel_stats_ = funnel
        return train_funnel

    @staticmethod
    def _check_seq_kind(f: Sequence, flat: np.ndarray, kind: str) -> None:
        if not flat.size:
            return
        got = _id_kind(pd.Series(flat), f"sequence column {f.column!r}")
        if got != kind:
            raise SchemaError(
                f"sequence column {f.column!r} holds {got} ids but {f.vocab_from!r} has {kind} ids"
            )

    def transform(self, df: pd.DataFrame, labels: bool | str = "auto") -> TensorFrame:
        """Encode ``df`` as a :class:`TensorFrame`.

        Args:
            df: the rows to encode; needs every feature column (extra columns are ignored).
            labels: ``"auto"`` encodes labels when all label columns are present (and raises
                if only some are), ``True`` requires them, ``False`` skips them.

        Unseen ids map to the OOV id 1, missing ids to 0. Raises :class:`SchemaError` on bad
        input, naming the column. :class:`FunnelStats` come from the full training tables (no
        labels needed); a ``UserWarning`` flags the frame they were fit on (target leakage).
        """
        return self._transform(df, labels, None)

    def _transform(self, df: pd.DataFrame, labels: bool | str, funnel: np.ndarray | None):
        """``transform``; ``funnel`` replaces the FunnelStats values (``fit_transform``)."""
        self._check_fitted()
        has_labels = self._check_df(df, labels)
        n = len(df)
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {
            "sparse": [f.name for f in self.sparse],
            "dense": self.dense_columns,
            "tasks": self.task_names,
            "texts": {},
        }
        sparse = np.zeros((n, len(self.sparse)), dtype=np.int64)
        for j, f in enumerate(self.sparse):
            vocab = self.vocabularies_[f.name]
            kind = _id_kind(df[f.column], f"column {f.column!r}")
            if kind != vocab.kind:
                raise SchemaError(
                    f"column {f.column!r} holds {kind} ids but the schema was fit on {vocab.kind} "
                    f"ids (dtype now {df[f.column].dtype}); cast the column"
                )
            values, missing = _canonical(df[f.column], kind)
            sparse[:, j] = vocab.lookup(values, missing)
        if self.sparse:
            tensors["sparse"] = torch.from_numpy(sparse)
        parts = [self._dense_values(df, f, self.dense_stats_[f.name])[:, None] for f in self.dense]
        if self.funnel_stats:
            parts.append(transform_funnel_stats(self, df) if funnel is None else funnel)
        if parts:
            tensors["dense"] = torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32))
        for f in self.sequences:
            vocab = self.vocabularies_[f.vocab_from or f.name]
            lengths, flat = _flatten_lists(df[f.column], f.column)
            self._check_seq_kind(f, flat, vocab.kind)
            ids = np.zeros((n, f.max_len), dtype=np.int64)
            if flat.size:
                flat_c, missing = _canonical(pd.Series(flat), vocab.kind)
                flat_ids = vocab.lookup(flat_c, missing)
                ends = np.cumsum(lengths)
                starts = ends - lengths
                row = np.repeat(np.arange(n), lengths)
                pos = np.arange(flat.size) - np.repeat(starts, lengths)
                skip = np.repeat(np.maximum(lengths - f.max_len, 0), lengths)
                keep = pos >= skip
                ids[row[keep], (pos - skip)[keep]] = flat_ids[keep]
            tensors[f"seq/{f.name}"] = torch.from_numpy(ids)
        for f in self.texts:
            codes, uniques = pd.factorize(df[f.column].fillna("").astype(str), sort=False)
            tensors[f"text/{f.name}"] = torch.from_numpy(codes.astype(np.int64))
            meta["texts"][f.name] = list(uniques)
        if has_labels:
            tensors["labels"] = torch.from_numpy(self._labels(df))
        if self.group is not None:
            codes, _ = pd.factorize(df[self.group], use_na_sentinel=False)
            tensors["group"] = torch.from_numpy(codes.astype(np.int64))
        if not tensors:
            tensors["index"] = torch.arange(n)
        return TensorFrame(tensors, meta)

    def fit_transform(self, df: pd.DataFrame, labels: bool | str = "auto") -> TensorFrame:
        """``fit(df)`` then encode ``df``; use it for the training rows.

        Same as ``fit(df).transform(df)`` except for :class:`FunnelStats`: every row gets
        out-of-fold (or, with ``time_column``, time-ordered) values, so no row sees its label.
        """
        return self._transform(df, labels, self._fit(df))

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "features": [f.to_dict() for f in self.features],
            "tasks": [t.to_dict() for t in self.tasks],
            "group": self.group,
            "vocabularies": None
            if self.vocabularies_ is None
            else {k: v.to_dict() for k, v in self.vocabularies_.items()},
            "dense_stats": self.dense_stats_,
            "funnel_stats": None
            if self.funnel_stats_ is None
            else {k: v.to_dict() for k, v in self.funnel_stats_.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported schema format_version {d.get('format_version')!r}")
        schema = cls(
            [Feature.from_dict(f) for f in d["features"]],
            [Task.from_dict(t) for t in d["tasks"]],
            group=d.get("group"),
        )
        if d.get("vocabularies") is not None:
            schema.vocabularies_ = {k: _Vocab.from_dict(v) for k, v in d["vocabularies"].items()}
            schema.dense_stats_ = d["dense_stats"]
            schema.funnel_stats_ = {
                k: FunnelTable.from_dict(v, schema.feature(k))
                for k, v in (d.get("funnel_stats") or {}).items()
            }
        return schema

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """JSON text of the schema (specs and learned state); also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> Schema:
        """Load from a JSON file path or a JSON string."""
        s = str(path_or_text)
        if s.lstrip().startswith("{"):
            return cls.from_dict(json.loads(s))
        with open(s, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        feats = ", ".join(f"{type(f).__name__}({f.name!r})" for f in self.features)
        tasks = ", ".join(t.name + (f"|{t.given}" if t.given else "") for t in self.tasks)
        state = "fitted" if self.is_fitted else "not fitted"
        return f"Schema([{feats}], tasks=[{tasks}], {state})"
