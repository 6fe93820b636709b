"""Field-by-field validation of a loaded ``schema.json`` dict.

Each check raises :class:`SchemaError` with the path of the offending field, e.g.
``invalid schema.json: features[2].dim: expected int, got str '16'``.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from ..tasks.task import Task
from .features import _KINDS, Dense, Feature, FunnelStats, Sequence, Sparse, Vector
from .hashing import TOKEN_DIGEST
from .vocab import INT64_MAX, SchemaError

_TOP_REQUIRED = ("format_version", "features", "tasks")
_TOP_OPTIONAL = (
    "group",
    "oov_warn_rate",
    "min_groups",
    "vocabularies",
    "dense_stats",
    "vector_stats",
    "funnel_stats",
)


def fail(path: str, message: str) -> NoReturn:
    raise SchemaError(f"invalid schema.json: {path}: {message}")


def _show(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -INT64_MAX - 1 <= v <= INT64_MAX


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_TYPES = {
    "int": (_is_int, "int"),
    "float": (_is_number, "finite number"),
    "str": (lambda v: isinstance(v, str), "str"),
    "bool": (lambda v: isinstance(v, bool), "bool"),
    "None": (lambda v: v is None, "null"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "[str]"),
}


def _check_type(v: Any, annotation: str, path: str) -> None:
    """``v`` must match one of the ``|``-separated types of a dataclass field annotation."""
    options = [_TYPES[t.strip()] for t in annotation.split("|") if t.strip() in _TYPES]
    if not any(ok(v) for ok, _ in options):
        fail(path, f"expected {' or '.join(name for _, name in options)}, got {_show(v)}")


def _expect(v: Any, typ: type, path: str, what: str) -> None:
    if not isinstance(v, typ):
        fail(path, f"expected {what}, got {_show(v)}")


def _keys(d: Any, path: str, required: tuple, optional: tuple = ()) -> None:
    """``d`` is an object holding every ``required`` key and no keys but those and ``optional``."""
    _expect(d, dict, path, "an object")
    missing = [k for k in required if k not in d]
    if missing:
        fail(path, f"missing key(s) {missing}")
    unknown = sorted(str(k) for k in d if k not in required and k not in optional)
    if unknown:
        fail(path, f"unknown key(s) {unknown}; allowed: {sorted([*required, *optional])}")


def _check_fields(d: Any, cls: type, path: str, skip: tuple = (), extra: tuple = ()) -> None:
    """Keys and value types of a dataclass dict (``skip``: fields never stored)."""
    stored = [f for f in fields(cls) if f.name not in skip]
    required = tuple(f.name for f in stored if f.default is MISSING)
    optional = tuple(f.name for f in stored if f.default is not MISSING) + extra
    _keys(d, path, required, optional)
    for f in stored:
        if f.name in d:
            _check_type(d[f.name], str(f.type), f"{path}.{f.name}")


def check_top(d: Any, version: int) -> None:
    _keys(d, "top level", _TOP_REQUIRED, _TOP_OPTIONAL)
    if d["format_version"] != version:
        fail("format_version", f"unsupported version {d['format_version']!r} (expected {version})")
    _expect(d["features"], list, "features", "a list")
    _expect(d["tasks"], list, "tasks", "a list")
    if d.get("group") is not None:
        _check_type(d["group"], "str | None", "group")
    if d.get("oov_warn_rate") is not None:
        _check_type(d["oov_warn_rate"], "float | None", "oov_warn_rate")
    if d.get("min_groups") is not None:
        _check_type(d["min_groups"], "int | None", "min_groups")


def check_feature(d: Any, path: str) -> None:
    _expect(d, dict, path, "an object")
    kind = d.get("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        fail(f"{path}.kind", f"unknown feature kind {kind!r}; kinds: {sorted(_KINDS)}")
    if cls is Sparse:
        if "hash_key" in d:
            fail(f"{path}.hash_key", "secret keys are never stored: pass them to from_json(keys=)")
        _check_fields(d, cls, path, skip=("hash_key",), extra=("kind", "keyed"))
        if "keyed" in d:
            _check_type(d["keyed"], "bool", f"{path}.keyed")
    else:
        _check_fields(d, cls, path, extra=("kind",))


def check_task(d: Any, path: str) -> None:
    _check_fields(d, Task, path)


def _values(values: Any, kind: str, anonymized: bool, path: str, unique: bool = True) -> None:
    """Vocabulary values: a list of ``kind`` ids (tokens when anonymised), all distinct."""
    _expect(values, list, path, "a list")
    inferred = pd.api.types.infer_dtype(values, skipna=False) if values else "empty"
    want = "string" if anonymized or kind == "str" else "integer"
    arr = np.asarray(values, dtype=object)
    if inferred not in (want, "empty") or (
        want == "integer" and not all(_is_int(v) for v in values)
    ):
        ok = _TYPES["int"][0] if want == "integer" else _TYPES["str"][0]
        j = next(j for j, v in enumerate(values) if not ok(v))
        fail(f"{path}[{j}]", f"expected a {kind} id, got {_show(values[j])}")
    if anonymized:
        good = pd.Series(arr, dtype=object).str.fullmatch(f"[0-9a-f]{{{2 * TOKEN_DIGEST}}}")
        if not good.all():
            j = int(np.argmin(good.to_numpy()))
            fail(f"{path}[{j}]", f"expected an anonymised token, got {_show(values[j])}")
    dup = pd.Index(arr).duplicated() if unique else np.zeros(0, dtype=bool)
    if dup.any():
        j = int(dup.argmax())
        first = values.index(values[j])
        fail(f"{path}[{j}]", f"duplicate value {values[j]!r} (also at [{first}])")


def check_vocabularies(vocabs: Any, features: list[Feature]) -> None:
    """One vocabulary per sparse feature and per sequence with its own vocabulary."""
    needed = {
        f.name: f
        for f in features
        if isinstance(f, Sparse) or (isinstance(f, Sequence) and f.vocab_from is None)
    }
    _keys(vocabs, "vocabularies", tuple(needed))
    for name, v in vocabs.items():
        spec, path = needed[name], f"vocabularies[{name!r}]"
        keyed = isinstance(spec, Sparse) and spec.hash_key is not None
        hashed = isinstance(spec, Sparse) and spec.hash_buckets is not None
        anonymized = isinstance(spec, Sparse) and spec.anonymize and not hashed
        _keys(v, path, ("kind",), ("values", "buckets", "anonymized", "key_check"))
        if v["kind"] not in ("int", "str"):
            fail(f"{path}.kind", f"expected 'int' or 'str', got {_show(v['kind'])}")
        if bool(v.get("anonymized", False)) is not anonymized or not isinstance(
            v.get("anonymized", False), bool
        ):
            fail(f"{path}.anonymized", f"must be {anonymized} for feature spec {spec}")
        if keyed != ("key_check" in v):
            fail(path, "key_check present without a keyed feature, or missing for one")
        if keyed:
            _check_type(v["key_check"], "str", f"{path}.key_check")
        if hashed:
            if v.get("buckets") != spec.hash_buckets or v.get("values") is not None:
                fail(path, f"a hashed feature needs buckets={spec.hash_buckets} and values=null")
        else:
            if v.get("buckets") is not None:
                fail(f"{path}.buckets", "must be null: the feature spec has no hash_buckets")
            _values(v.get("values"), v["kind"], anonymized, f"{path}.values")


def _numbers(d: Any, path: str, names: list[str], positive: tuple = ()) -> None:
    _keys(d, path, tuple(names))
    for k in names:
        if not _is_number(d[k]) or (k in positive and d[k] <= 0):
            fail(f"{path}.{k}", f"expected a finite number{' > 0' * (k in positive)}")


def check_dense_stats(stats: Any, dense: list[Dense]) -> None:
    _keys(stats, "dense_stats", tuple(f.name for f in dense))
    for f in dense:
        path = f"dense_stats[{f.name!r}]"
        _keys(stats[f.name], path, ("mean", "std"), ("fill",))
        _numbers(stats[f.name], path, list(stats[f.name]), positive=("std",))


def check_vector_stats(stats: Any, vectors: list[Vector]) -> None:
    """Per-dimension ``mean`` / ``std``, lists of ``dim`` numbers, per ``"standard"`` vector."""
    standard = [f for f in vectors if f.normalize == "standard"]
    if stats is None and not standard:
        return
    _keys(stats, "vector_stats", tuple(f.name for f in standard))
    for f in standard:
        path = f"vector_stats[{f.name!r}]"
        _keys(stats[f.name], path, ("mean", "std"))
        for k in ("mean", "std"):
            v = stats[f.name][k]
            if not isinstance(v, list) or len(v) != f.dim:
                got = f"{len(v)} values" if isinstance(v, list) else _show(v)
                fail(
                    f"{path}.{k}",
                    f"expected {f.dim} numbers, the dim of the feature spec "
                    f"Vector({f.name!r}, dim={f.dim}); got {got}",
                )
            if not all(map(_is_number, v)) or (k == "std" and min(v) <= 0):
                fail(f"{path}.{k}", f"expected finite numbers{' > 0' * (k == 'std')}")


def check_funnel_stats(tables: Any, specs: list[FunnelStats], tasks: list[Task]) -> None:
    _keys(tables, "funnel_stats", tuple(s.name for s in specs))
    for spec in specs:
        t, path = tables[spec.name], f"funnel_stats[{spec.name!r}]"
        _keys(t, path, ("tasks", "entity", "num", "den", "prior", "mean", "std", "fingerprint"))
        names = [x.name for x in spec.resolve_tasks(tasks)]
        if t["tasks"] != names:
            fail(f"{path}.tasks", f"expected {names} for the specs, got {_show(t['tasks'])}")
        _keys(t["entity"], f"{path}.entity", ("kinds", "values"))
        kinds, values = t["entity"]["kinds"], t["entity"]["values"]
        n_cols = len(spec.entity_columns)
        if (
            not isinstance(kinds, list)
            or len(kinds) != n_cols
            or not all(k in ("int", "str") for k in kinds)
        ):
            fail(f"{path}.entity.kinds", f"expected {n_cols} of 'int' / 'str', got {kinds!r}")
        _expect(values, list, f"{path}.entity.values", "a list")
        if len(values) != n_cols:
            fail(f"{path}.entity.values", f"expected {n_cols} lists (one per entity column)")
        for j, (kind, col) in enumerate(zip(kinds, values)):
            _values(col, kind, False, f"{path}.entity.values[{j}]", unique=n_cols == 1)
        g = len(values[0])
        if any(len(col) != g for col in values):
            fail(f"{path}.entity.values", "the entity columns have different lengths")
        if n_cols > 1 and pd.MultiIndex.from_arrays(values).duplicated().any():
            fail(f"{path}.entity.values", "duplicate entity")
        for key in ("num", "den"):
            _keys(t[key], f"{path}.{key}", tuple(names))
            for name in names:
                col = t[key][name]
                if not isinstance(col, list) or len(col) != g or not all(map(_is_number, col)):
                    fail(f"{path}.{key}[{name!r}]", f"expected {g} finite numbers")
        _numbers(t["prior"], f"{path}.prior", names)
        cols = spec.output_columns(names)
        _numbers(t["mean"], f"{path}.mean", cols)
        _numbers(t["std"], f"{path}.std", cols, positive=tuple(cols))
        _keys(t["fingerprint"], f"{path}.fingerprint", ("rows", "entity", "labels"))
        for k, v in t["fingerprint"].items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                fail(f"{path}.fingerprint.{k}", f"expected an int >= 0, got {_show(v)}")
