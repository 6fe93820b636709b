"""``schema.json``: writing a :class:`~recsys_mt.data.Schema` and reading it back, validated.

Reading checks every field (types, unknown and missing keys, duplicate vocabulary values,
consistency of the learned state with the specs) and raises :class:`SchemaError` naming the
field path, so a hand-edited file fails with ``vocabularies['item_id'].values[7]: duplicate
value 'x'`` instead of a ``KeyError`` far away. Secret hash keys are never written; reading a
schema with keyed features needs them (``keys=``) and checks them against the stored digest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..tasks.task import Task
from .features import Feature, Sparse
from .funnel_stats import FunnelTable
from .hashing import Key, key_check, resolve_keys
from .validate import (
    check_dense_stats,
    check_feature,
    check_funnel_stats,
    check_task,
    check_top,
    check_vector_stats,
    check_vocabularies,
    fail,
)
from .vocab import SchemaError, _Vocab

if TYPE_CHECKING:
    from .schema import Schema

FORMAT_VERSION = 1


def schema_to_dict(schema: Schema) -> dict[str, Any]:
    """JSON-safe dict of the specs and learned state (no secret keys)."""
    vocabs, funnel = schema.vocabularies_, schema.funnel_stats_
    d = {
        "format_version": FORMAT_VERSION,
        "features": [f.to_dict() for f in schema.features],
        "tasks": [t.to_dict() for t in schema.tasks],
        "group": schema.group,
        "oov_warn_rate": schema.oov_warn_rate,
        "min_groups": schema.min_groups,
        "vocabularies": None if vocabs is None else {k: v.to_dict() for k, v in vocabs.items()},
        "dense_stats": schema.dense_stats_,
        "funnel_stats": None if funnel is None else {k: v.to_dict() for k, v in funnel.items()},
    }
    if schema.vectors:  # only then, so files of schemas without vectors keep their layout
        d["vector_stats"] = schema.vector_stats_
    return d


def schema_from_dict(cls: type, d: Any, keys: Mapping[str, Key] | Key | None) -> Schema:
    """Validate ``d`` (a :func:`schema_to_dict` dict, perhaps hand-edited) and build the schema."""
    check_top(d, FORMAT_VERSION)
    for i, f in enumerate(d["features"]):
        check_feature(f, f"features[{i}]")
    for i, t in enumerate(d["tasks"]):
        check_task(t, f"tasks[{i}]")
    keyed = [f["name"] for f in d["features"] if f.get("keyed")]
    try:
        key_map = resolve_keys(keys, keyed)
    except ValueError as e:
        raise SchemaError(str(e)) from None
    absent = [name for name in keyed if name not in key_map]
    if absent:
        raise SchemaError(
            f"feature(s) {absent} hash with a secret hash_key, which schema.json never stores: "
            f"pass it, e.g. Schema.from_json(path, keys={{{absent[0]!r}: key}}) (or keys=key "
            "for one key shared by every keyed feature)"
        )
    features = [_feature(f, f"features[{i}]", key_map) for i, f in enumerate(d["features"])]
    tasks = [_build(Task, t, f"tasks[{i}]") for i, t in enumerate(d["tasks"])]
    try:
        schema = cls(
            features,
            tasks,
            group=d.get("group"),
            oov_warn_rate=d.get("oov_warn_rate", 0.5),
            min_groups=d.get("min_groups"),  # files written before it existed: no filter
        )
    except (ValueError, TypeError) as e:
        raise SchemaError(f"invalid schema.json: {e}") from None
    if d.get("vocabularies") is None:
        for name in ("dense_stats", "vector_stats", "funnel_stats"):
            if d.get(name) is not None:
                fail(name, "learned state of an unfitted schema (vocabularies is null)")
        return schema
    by_name = {f.name: f for f in features}
    check_vocabularies(d["vocabularies"], features)
    for name, v in d["vocabularies"].items():
        spec = by_name[name]
        if isinstance(spec, Sparse) and spec.hash_key is not None:
            if v["key_check"] != key_check(spec.hash_key):
                raise SchemaError(
                    f"the key given for feature {name!r} is not the one it was fit with "
                    f"(vocabularies[{name!r}].key_check does not match)"
                )
    check_dense_stats(d.get("dense_stats"), schema.dense)
    check_vector_stats(d.get("vector_stats"), schema.vectors)
    check_funnel_stats(d.get("funnel_stats") or {}, schema.funnel_stats, schema.tasks)
    vocabs = {
        k: _Vocab.from_dict(v, getattr(by_name[k], "hash_key", None))
        for k, v in d["vocabularies"].items()
    }
    tables = {}
    for k, v in (d.get("funnel_stats") or {}).items():
        try:
            tables[k] = FunnelTable.from_dict(v, by_name[k])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            fail(f"funnel_stats[{k!r}]", f"malformed table ({type(e).__name__}: {e})")
    schema.vocabularies_ = vocabs
    schema.dense_stats_ = {k: dict(v) for k, v in d["dense_stats"].items()}
    schema.vector_stats_ = {k: dict(v) for k, v in (d.get("vector_stats") or {}).items()}
    schema.funnel_stats_ = tables
    return schema


def _build(cls: type, d: dict[str, Any], path: str) -> Any:
    try:
        return cls.from_dict(d)
    except (ValueError, TypeError) as e:
        fail(path, str(e))


def _feature(d: dict[str, Any], path: str, keys: dict[str, bytes]) -> Feature:
    d = dict(d)
    if d.get("keyed"):
        d["hash_key"] = keys[d["name"]]
    return _build(Feature, d, path)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise SchemaError(f"invalid schema.json: the key {k!r} appears twice in one object")
        seen.add(k)
    return dict(pairs)


def write_json(schema: Schema, path: str | os.PathLike | None) -> str:
    """JSON text of ``schema``; also written to ``path`` if given."""
    text = json.dumps(schema_to_dict(schema), indent=1, ensure_ascii=False)
    if path is not None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return text


def read_json(
    cls: type, path_or_text: str | os.PathLike, keys: Mapping[str, Key] | Key | None
) -> Schema:
    """A schema from a ``schema.json`` path or its text (see :func:`schema_from_dict`)."""
    s = str(path_or_text)
    if not s.lstrip().startswith("{"):
        with open(s, encoding="utf-8") as fh:
            s = fh.read()
    try:
        d = json.loads(s, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise SchemaError(f"invalid schema.json: not JSON ({e})") from None
    return schema_from_dict(cls, d, keys)
