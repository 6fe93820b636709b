"""Validation of a checkpoint's ``config.json`` before anything is built from it.

A hand-edited or damaged config gets a :class:`~recsys_mt.model.persistence.CheckpointError`
naming the file and the field (``encoders[1]``, ``head.num_experts`` ...) instead of a raw
``KeyError`` / ``TypeError`` from deep inside a constructor.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

from ..registry import build as build_registered

__all__ = ["build_part", "check_config", "read_config"]

_OPTIONAL_STR = (str, type(None))
#: field -> (accepted types, required)
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "library": ((str,), True),
    "version": ((str,), False),
    "format_version": ((int,), True),
    "encoders": ((list,), True),
    "fusion": ((dict,), True),
    "head": ((dict,), True),
    "balancer": ((dict,), True),
    "supervision": ((str,), True),
    "counterfactual": (_OPTIONAL_STR, False),
    "counterfactual_weight": ((numbers.Real,), False),
    "calibration": (_OPTIONAL_STR, False),
    "auto_calibrate": (_OPTIONAL_STR, False),
    "calibration_prior": (_OPTIONAL_STR, False),
    "rate_prior": ((list, type(None)), False),
}


def read_config(path: Path, error: type[Exception]) -> dict[str, Any]:
    """Parse ``path`` as JSON, raising ``error`` naming the file on bad JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path} is not valid JSON: {e}") from None


def check_config(config: Any, path: Path, error: type[Exception]) -> None:
    """Raise ``error`` naming ``path`` and the field for unknown, missing or mistyped fields."""
    if not isinstance(config, dict):
        raise error(f"{path}: the config must be a JSON object, got {type(config).__name__}")
    unknown = sorted(set(config) - set(FIELDS))
    if unknown:
        raise error(f"{path}: unknown field(s) {unknown}; known: {sorted(FIELDS)}")
    for name, (types, required) in FIELDS.items():
        if name not in config:
            if required:
                raise error(f"{path}: required field {name!r} is missing")
            continue
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise error(f"{path}: field {name!r} must be {want}, got {value!r}")
    if not config["encoders"]:
        raise error(f"{path}: field 'encoders' is empty")
    parts = [(f"encoders[{i}]", c) for i, c in enumerate(config["encoders"])]
    parts += [(k, config[k]) for k in ("fusion", "head", "balancer")]
    for field, part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise error(f"{path}: field {field!r} must be an object with a string 'type'")


def build_part(kind: str, config: dict[str, Any], field: str, path: Path, error: type) -> Any:
    """Build a registered ``kind`` from ``config``, naming ``field`` when that fails."""
    try:
        return build_registered(kind, config)
    except (KeyError, TypeError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise error(f"{path}: field {field!r} ({config.get('type')!r}): {msg}") from e
