"""Saving and loading :class:`~recsys_mt.model.MultiTaskModel` checkpoints.

A checkpoint is a directory with ``config.json`` (the architecture, built back through the
registry), ``schema.json`` (the fitted schema) and ``model.safetensors`` (the weights), plus
whatever files encoders add (``save_extra``). Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..data.hashing import Key
from ..data.schema import Schema
from .calibration import METHODS as CALIBRATION_METHODS
from .config_check import build_part, check_config, read_config

CONFIG_NAME = "config.json"
SCHEMA_NAME = "schema.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match the schema / config."""


def excluded_keys(model: Any) -> list[str]:
    """State-dict prefixes encoders keep out of the weights file (``checkpoint_exclude()``)."""
    keys = []
    for i, enc in enumerate(model.encoders):
        fn = getattr(enc, "checkpoint_exclude", None)
        if fn is not None:
            keys += [f"encoders.{i}.{k}" for k in fn()]
    return keys


def save_pretrained(model: Any, directory: str | os.PathLike) -> Path:
    """:meth:`MultiTaskModel.save_pretrained`: the checkpoint files of ``model``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config()
    excluded = tuple(excluded_keys(model))
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not (excluded and k.startswith(excluded))
    }
    for enc in model.encoders:
        fn = getattr(enc, "save_extra", None)
        if fn is not None:
            fn(directory)
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    model.schema.to_json(directory / SCHEMA_NAME)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=1), encoding="utf-8")
    return directory


def load_pretrained(
    cls: type,
    directory: str | os.PathLike,
    schema: Schema | None = None,
    map_location: str | torch.device = "cpu",
    schema_keys: Mapping[str, Key] | Key | None = None,
) -> Any:
    """:meth:`MultiTaskModel.from_pretrained`: rebuild a ``cls`` model saved by
    :func:`save_pretrained` from a local directory.

    Nothing is unpickled: the config is JSON, the weights are safetensors. Passing
    ``schema`` checks it against the saved one and raises :class:`CheckpointError` listing
    the differences. Weights whose names or shapes do not match the rebuilt architecture
    also raise :class:`CheckpointError`.

    ``schema_keys`` are the secret ``hash_key`` values of keyed features, as for
    :meth:`Schema.from_json` (``keys=``); without them, the keys of ``schema`` are used.
    """
    from safetensors.torch import load_file

    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"map_location {map_location!r} is not a device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"map_location={str(map_location)!r} but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"map_location={str(map_location)!r} but MPS is not available here")
    directory = Path(directory)
    for name in (CONFIG_NAME, SCHEMA_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} is not a recsys_mt checkpoint: {name} missing")
    config_path = directory / CONFIG_NAME
    config = read_config(config_path, CheckpointError)
    check_config(config, config_path, CheckpointError)
    if config.get("library") != "recsys_mt" or config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{directory / CONFIG_NAME} is not a recsys_mt v1 config")
    if schema_keys is None and schema is not None:
        schema_keys = schema._hash_keys() or None
    saved = Schema.from_json(directory / SCHEMA_NAME, keys=schema_keys)
    if schema is not None and schema != saved:
        raise CheckpointError(
            "the given schema does not match the checkpoint's: " + _schema_diff(schema, saved)
        )

    def part(kind: str, cfg: dict[str, Any], field: str) -> Any:
        return build_part(kind, cfg, field, config_path, CheckpointError)

    encoders = [part("encoder", c, f"encoders[{i}]") for i, c in enumerate(config["encoders"])]
    for enc in encoders:
        fn = getattr(enc, "load_extra", None)
        if fn is not None:
            fn(directory)
    head = part("head", config["head"], "head")
    fusion = part("fusion", config["fusion"], "fusion")
    balancer = part("balancer", config["balancer"], "balancer")
    try:
        model = cls(
            saved,
            encoders=encoders,
            head=head,
            fusion=fusion,
            supervision=config["supervision"],
            balancer=balancer,
            counterfactual=config.get("counterfactual"),
            counterfactual_weight=config.get("counterfactual_weight", 0.1),
            auto_calibrate=config.get("auto_calibrate"),
            calibration_prior=config.get("calibration_prior"),
        )
        prior = config.get("rate_prior")
        if prior is not None:
            if not all(c is None or isinstance(c, str) for c in prior):
                raise ValueError(f"rate_prior must list feature names or nulls, got {prior!r}")
            model.rate_prior.configure(saved, prior)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path} does not describe a valid model: {e}") from e
    weights = directory / WEIGHTS_NAME
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as e:  # safetensors raises its own error type for a damaged file
        raise CheckpointError(f"{weights} cannot be read (damaged or truncated?): {e}") from e
    expected = model.state_dict()
    excluded = tuple(excluded_keys(model))
    missing = [
        k
        for k in expected
        if k not in state
        and not (excluded and k.startswith(excluded))
        and k not in ("calibration", "rate_prior.weight")  # older checkpoints: identity, none
    ]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"weights in {directory / WEIGHTS_NAME} do not match the architecture: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {wrong[:5]}"
        )
    floats = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(floats) == 1 and floats != {torch.float32}:  # saved after model.to(float64 / bf16)
        model.to(floats.pop())  # keep it: loading into float32 would round it silently
    model.load_state_dict(state, strict=False)
    method = config.get("calibration")
    if method not in (None, *CALIBRATION_METHODS):
        raise CheckpointError(f"unknown calibration method {method!r} in {CONFIG_NAME}")
    model.calibration_method = method if "calibration" in state else None
    return model.to(map_location)


def _schema_diff(a: Schema, b: Schema) -> str:
    da, db = a.to_dict(), b.to_dict()
    diffs = []
    for key in ("features", "tasks", "group", "dense_stats", "vector_stats", "funnel_stats"):
        if da.get(key) != db.get(key):
            diffs.append(key)
    va, vb = da["vocabularies"] or {}, db["vocabularies"] or {}
    for name in sorted(set(va) | set(vb)):
        if va.get(name) != vb.get(name):
            na = None if name not in va else len(va[name]["values"] or []) or va[name]["buckets"]
            nb = None if name not in vb else len(vb[name]["values"] or []) or vb[name]["buckets"]
            diffs.append(f"vocabulary of {name!r} ({na} vs {nb} entries)")
    return "; ".join(diffs) or "unknown difference"
