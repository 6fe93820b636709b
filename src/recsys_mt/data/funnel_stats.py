"""Leakage-safe funnel statistics: smoothed per-entity stage rates learned from the labels.

A :class:`~recsys_mt.data.FunnelStats` feature is target encoding of an entity (a user, a shop,
a ``(user, category)`` pair) along the purchase funnel. For a binary task ``t`` with parent ``p``
and an entity value ``e``::

    num_t(e) = Σ joint label of t over e's rows      (clicks for ctr, purchases for cvr)
    den_t(e) = number of e's rows                     if t is a root task
             = Σ joint label of p over e's rows       otherwise (clicks for cvr)
    rate_t(e) = (num_t(e) + m · prior_t) / (den_t(e) + m)       m = smoothing
    outputs:  logit(rate_t(e))  and  log1p(den_t(e))  (standardised)

``prior_t = Σ num_t / Σ den_t`` over all training rows (the rate of ``t`` given its parent).

Which rows a value is computed from is the whole point:

- ``Schema.transform`` (validation, test, serving) uses the full training tables;
- ``Schema.fit_transform`` gives every training row *out-of-fold* values (rows are split into
  ``folds`` folds by a seeded random permutation; a row's statistics count the other folds'
  rows only), or with ``time_column`` *time-ordered* values (only rows with a strictly earlier
  time). Either way no training row sees its own label;
- the standardisation statistics are the mean / std of those leakage-safe training values.

``fit(df)`` followed by ``transform(df)`` on the same rows would hand every row its own label;
the table keeps a fingerprint of the fit frame and ``transform`` warns when it sees it again.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from ..tasks.task import Task
from .features import Feature, FunnelStats
from .funnel_kernels import (
    _entity_hash,
    _entity_values,
    _group,
    _label_hash,
    _out_of_fold,
    _raw,
    _sum_by,
    _time_ordered,
    _time_rank,
)
from .vocab import SchemaError

PRIOR_EPS = 1e-6
"""Priors are clipped to ``[PRIOR_EPS, 1 - PRIOR_EPS]`` so every logit is finite."""


# ----------------------------------------------------------------------------- spec helpers
def funnel_columns(specs: list[FunnelStats], tasks: list[Task]) -> list[str]:
    """Output column names of ``specs``, in order (per spec, per task: rate then count)."""
    return [c for s in specs for c in s.output_columns([t.name for t in s.resolve_tasks(tasks)])]


def validate_funnel_stats(features: list[Feature], tasks: list[Task]) -> None:
    """Schema-construction checks: tasks exist and are binary, output names are unique."""
    taken = {f.name for f in features}
    for spec in (f for f in features if isinstance(f, FunnelStats)):
        for col in funnel_columns([spec], tasks):
            if col in taken:
                raise ValueError(
                    f"FunnelStats({spec.name!r}) outputs column {col!r}, which another feature "
                    "or FunnelStats output already uses; rename one of them"
                )
            taken.add(col)


# ----------------------------------------------------------------------------- learned state
class FunnelTable:
    """Learned state of one :class:`~recsys_mt.data.FunnelStats` feature.

    Attributes:
        spec: the feature spec.
        tasks: names of the ``K`` tasks with rates.
        kinds: id kind (``"int"`` / ``"str"``) of each entity column.
        keys: per entity column, the ``G`` known values (entity ``g`` is
            ``tuple(k[g] for k in keys)``).
        num, den: float64 ``[G, K]`` per-entity numerators / denominators (full training data).
        prior: float64 ``[K]`` global training rate of each task given its parent.
        mean, std: float64 ``[C]`` standardisation of the ``C`` output columns.
        fingerprint: ``{"rows", "entity", "labels"}`` of the fit frame (leak warning).
    """

    def __init__(self, spec: FunnelStats, state: dict[str, Any]):
        """``state``: the JSON-safe dict of :meth:`to_dict` (the source of truth)."""
        self.spec, self.state = spec, state
        self.tasks: list[str] = list(state["tasks"])
        self.kinds: list[str] = list(state["entity"]["kinds"])
        self.keys: list[list] = state["entity"]["values"]
        k, g, cols = len(self.tasks), len(self.keys[0]), self.columns
        self.num = np.array([state["num"][t] for t in self.tasks], np.float64).reshape(k, g).T
        self.den = np.array([state["den"][t] for t in self.tasks], np.float64).reshape(k, g).T
        self.prior = np.array([state["prior"][t] for t in self.tasks], dtype=np.float64)
        self.mean = np.array([state["mean"][c] for c in cols], dtype=np.float64)
        self.std = np.array([state["std"][c] for c in cols], dtype=np.float64)
        self.fingerprint: dict[str, int] = state["fingerprint"]
        self._index: pd.Index | None = None

    @property
    def columns(self) -> list[str]:
        """Output column names (``"<name>.<task>_rate"``, ``"<name>.<task>_count"``)."""
        return self.spec.output_columns(self.tasks)

    @classmethod
    def fit(
        cls,
        spec: FunnelStats,
        tasks: list[Task],
        df: pd.DataFrame,
        joint: np.ndarray,
        label_columns: list[str],
    ) -> tuple[FunnelTable, np.ndarray]:
        """Learn the tables from ``df``; also return the leakage-safe raw training values.

        Args:
            spec: the feature spec.
            tasks: all schema tasks (parents first).
            df: training rows.
            joint: float64 ``[N, T]`` joint labels (label times the labels of all ancestors).
            label_columns: label column names (for the fingerprint).

        Returns:
            ``(table, raw)`` with ``raw`` float64 ``[N, C]``: out-of-fold (or time-ordered)
            values before standardisation.
        """
        chosen = spec.resolve_tasks(tasks)
        index = {t.name: j for j, t in enumerate(tasks)}
        time_rank = _time_rank(df, spec) if spec.time_column is not None else None
        values, missing, kinds = _entity_values(df, spec)
        codes, keys = _group(values, missing)
        num_w = joint[:, [index[t.name] for t in chosen]]
        den_w = np.stack(
            [joint[:, index[t.given]] if t.given else np.ones(len(df)) for t in chosen], axis=1
        )
        k = len(chosen)
        weights = np.concatenate([num_w, den_w], axis=1)
        totals = _sum_by(codes, weights, len(keys[0]))
        total_den = den_w.sum(axis=0)
        prior = np.divide(num_w.sum(axis=0), total_den, out=np.full(k, 0.5), where=total_den > 0)
        prior = np.clip(prior, PRIOR_EPS, 1 - PRIOR_EPS)
        if time_rank is None:
            seen = _out_of_fold(codes, weights, spec.folds, spec.seed)
            seen *= spec.folds / (spec.folds - 1)  # the full tables' scale
        else:
            seen = _time_ordered(codes, weights, time_rank)
        if spec.unseen_rate:  # rows that see what an unknown entity gets at serving time
            rng = np.random.default_rng([spec.seed, 1])
            seen[rng.random(len(df)) < spec.unseen_rate] = 0.0
        raw = _raw(seen[:, :k], seen[:, k:], prior, spec.smoothing, spec.counts)
        std = raw.std(axis=0)
        names = [t.name for t in chosen]
        cols = spec.output_columns(names)
        state = {
            "tasks": names,
            "entity": {"kinds": kinds, "values": [key.tolist() for key in keys]},
            "num": dict(zip(names, totals[:, :k].T.astype(np.int64).tolist())),
            "den": dict(zip(names, totals[:, k:].T.astype(np.int64).tolist())),
            "prior": dict(zip(names, prior.tolist())),
            "mean": dict(zip(cols, raw.mean(axis=0).tolist())),
            "std": dict(zip(cols, np.where(std > 1e-12, std, 1.0).tolist())),
            "fingerprint": {
                "rows": len(df),
                "entity": _entity_hash(values),
                "labels": _label_hash(df, label_columns),
            },
        }
        return cls(spec, state), raw

    # ------------------------------------------------------------------ lookups
    def _positions(self, values: list[np.ndarray], missing: np.ndarray) -> np.ndarray:
        """Row → entity index ``[N]`` (-1 for unknown or missing values)."""
        if self._index is None:
            self._index = (
                pd.Index(self.keys[0])
                if len(self.keys) == 1
                else pd.MultiIndex.from_arrays(self.keys)
            )
        if len(self._index) == 0:
            return np.full(len(missing), -1, dtype=np.int64)
        target = values[0] if len(values) == 1 else pd.MultiIndex.from_arrays(values)
        pos = np.asarray(self._index.get_indexer(target), dtype=np.int64)
        pos[missing] = -1
        return pos

    def _raw_from(self, values: list[np.ndarray], missing: np.ndarray) -> np.ndarray:
        pos = self._positions(values, missing)
        hit = pos >= 0
        num = np.zeros((len(pos), len(self.tasks)))
        den = np.zeros_like(num)
        num[hit], den[hit] = self.num[pos[hit]], self.den[pos[hit]]
        return _raw(num, den, self.prior, self.spec.smoothing, self.spec.counts)

    def raw_values(self, df: pd.DataFrame) -> np.ndarray:
        """Unstandardised float64 ``[N, C]`` values of ``df``'s rows from the full training tables.

        Unknown or missing entity values get ``logit(prior)`` and count ``log1p(0) = 0``.
        """
        values, missing, _ = _entity_values(df, self.spec, self.kinds)
        return self._raw_from(values, missing)

    def standardize(self, raw: np.ndarray) -> np.ndarray:
        """``(raw - mean) / std``, float64 ``[N, C]``."""
        return (raw - self.mean) / self.std

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Standardised float64 ``[N, C]`` values of ``df``'s rows (full training tables)."""
        return self.standardize(self.raw_values(df))

    def seen_at_fit(self, df: pd.DataFrame, values: list[np.ndarray], labels: list[str]) -> bool:
        """Whether ``df`` looks like the fit frame (same length, entities and, if present,
        labels). Only hashes when the length matches."""
        fp = self.fingerprint
        if len(df) != fp.get("rows") or _entity_hash(values) != fp.get("entity"):
            return False
        if labels and all(c in df.columns for c in labels):
            return _label_hash(df, labels) == fp.get("labels")
        return True

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: entity keys column-wise (ints stay ints, strings stay strings; a
        crossed entity ``g`` is ``tuple(values[j][g] for j)``), integer counts per task, priors
        per task, standardisation per output column, and the fit-frame fingerprint."""
        return self.state

    @classmethod
    def from_dict(cls, d: dict[str, Any], spec: FunnelStats) -> FunnelTable:
        return cls(spec, d)


# ----------------------------------------------------------------------------- Schema hooks
def fit_funnel_stats(
    schema: Any, df: pd.DataFrame, has_labels: bool
) -> tuple[dict[str, FunnelTable], np.ndarray | None]:
    """Learn every FunnelStats table of ``schema`` from ``df`` (validating first).

    Returns:
        ``(tables, train)``: tables by feature name, and the standardised leakage-safe values
        float64 ``[N, C]`` of ``df``'s rows (``None`` when the schema has no FunnelStats).
    """
    specs = schema.funnel_stats
    if not specs:
        return {}, None
    label_columns = schema._label_columns()
    if not has_labels:
        absent = [c for c in label_columns if c not in df.columns]
        raise SchemaError(
            f"FunnelStats {[s.name for s in specs]} learn from the labels: fit needs the label "
            f"column(s) {absent} (transform does not)"
        )
    for spec in specs:
        if spec.time_column is not None and spec.time_column not in df.columns:
            raise SchemaError(
                f"missing time column {spec.time_column!r} of FunnelStats({spec.name!r}); the "
                f"DataFrame has {list(df.columns)}"
            )
    labels = schema._labels(df).astype(np.float64)
    joint = labels.copy()
    index = {t.name: j for j, t in enumerate(schema.tasks)}
    for j, t in enumerate(schema.tasks):  # parents come first
        if t.given is not None:
            joint[:, j] *= joint[:, index[t.given]]
    tables, parts = {}, []
    for spec in specs:
        table, raw = FunnelTable.fit(spec, schema.tasks, df, joint, label_columns)
        tables[spec.name] = table
        parts.append(table.standardize(raw))
    return tables, np.concatenate(parts, axis=1)


def transform_funnel_stats(schema: Any, df: pd.DataFrame) -> np.ndarray:
    """Standardised float64 ``[N, C]`` values of every FunnelStats feature from the full training
    tables; warns (``UserWarning``) when ``df`` looks like the frame the tables were fit on."""
    parts, leaked = [], []
    label_columns = schema._label_columns()
    for spec in schema.funnel_stats:
        table = schema.funnel_stats_[spec.name]
        values, missing, _ = _entity_values(df, spec, table.kinds)
        if table.seen_at_fit(df, values, label_columns):
            leaked.append(spec.name)
        parts.append(table.standardize(table._raw_from(values, missing)))
    if leaked:
        warnings.warn(
            f"Schema.transform: this DataFrame looks like the one FunnelStats {leaked} were fit "
            "on. transform uses the full training tables, so every row's funnel statistics "
            "include its own label (target leakage). Encode training rows with "
            "schema.fit_transform(train_df) and use transform only for validation, test and "
            "serving rows.",
            UserWarning,
            stacklevel=4,
        )
    return np.concatenate(parts, axis=1)
