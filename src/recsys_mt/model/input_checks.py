"""Checks that rows reaching the model were encoded by the model's schema.

A frame transformed by another schema — most often the grown one of ``schema.update(...)``
before ``model.grow(new_schema)`` — either lacks a tensor the encoders read or holds ids past
the end of an embedding table. Without a check the first fails as a bare ``KeyError`` inside an
encoder and the second as ``IndexError: index out of range in self`` deep inside torch (on a
GPU, as an asynchronous device-side assert). :func:`check_inputs` names the feature instead.
It reads one ``max`` / ``min`` per id tensor, so it runs on every batch that is scored.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..encoders import DenseEncoder, IDEmbedding, VectorEncoder

__all__ = ["check_inputs", "required_tensors"]


def required_tensors(model: nn.Module) -> list[tuple[str, str]]:
    """``(tensor key, feature names)`` of every tensor the model's encoders read."""
    schema = model.schema
    need: list[tuple[str, str]] = []
    for enc in model.encoders:
        if isinstance(enc, IDEmbedding):
            if enc.group_dims:
                need.append(("sparse", ", ".join(f.name for f in schema.sparse)))
            need += [(f"seq/{n}", n) for n, *_ in enc._seq]
        elif isinstance(enc, DenseEncoder):
            need.append(("dense", ", ".join(schema.dense_columns)))
        elif isinstance(enc, VectorEncoder):
            for n, flag in zip(enc._names, enc._flagged):
                need.append((f"vec/{n}", n))
                if flag:
                    need.append((f"vec_present/{n}", n))
    return need


def _check_ids(what: str, name: str, ids: Tensor, size: int) -> None:
    if ids.numel() == 0:
        return
    hi, lo = int(ids.max()), int(ids.min())
    if lo < 0:
        raise ValueError(f"{what}: feature {name!r} holds the negative id {lo}")
    if hi >= size:
        raise ValueError(
            f"{what}: feature {name!r} holds id {hi}, but the model's vocabulary of it has "
            f"{size} ids: the rows were encoded by another schema. After schema.update(...), "
            "call model.grow(new_schema) before scoring its frames; otherwise encode the rows "
            "with model.schema"
        )


def check_inputs(model: nn.Module, tensors: Mapping[str, Tensor], what: str) -> None:
    """Raise ``ValueError`` (prefixed ``what``) when ``tensors`` (a frame or one batch) lacks
    a tensor the model reads, has another number of sparse columns than the schema, or holds
    an id outside a feature's vocabulary."""
    schema = model.schema
    need = required_tensors(model)
    for key, feature in need:
        if key not in tensors:
            raise ValueError(
                f"{what}: the frame has no {key!r} tensor for feature(s) {feature}; "
                "transform the rows with the model's schema"
            )
    keys = {key for key, _ in need}
    if "sparse" in keys:
        sparse = tensors["sparse"]
        names = [f.name for f in schema.sparse]
        if sparse.dim() != 2 or sparse.shape[1] != len(names):
            raise ValueError(
                f"{what}: the frame's 'sparse' tensor has shape {tuple(sparse.shape)}, the "
                f"model's schema {len(names)} sparse features ({', '.join(names)}); transform "
                "the rows with the model's schema"
            )
        for s, name in enumerate(names):
            _check_ids(what, name, sparse[:, s], schema.vocab_size(name))
    for key in keys:
        if key.startswith("seq/"):
            name = key[4:]
            _check_ids(what, name, tensors[key], schema.vocab_size(name))
