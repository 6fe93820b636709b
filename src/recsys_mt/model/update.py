"""Fresh models: grow a trained model to a schema with more ids, then keep training.

The recipe (see the "Keeping models fresh" docs page)::

    new_schema, growth = model.schema.update(period2_df)    # new ids appended, old ids kept
    model.grow(new_schema)                                  # new rows = the vocabulary's OOV row
    Trainer(max_epochs=1).fit(model, new_schema.transform(period2_df), val)

:func:`grow_model` changes only the id embedding tables: each vocabulary's known rows move
bit-identically to their (possibly shifted) offset in the packed table, and every new id gets a
copy of that vocabulary's trained OOV row, the vector the model used for these ids while they
were unknown. Right after growing, the model therefore scores every row exactly as before
(noise off), new ids included; continued training then separates the new ids from the OOV row.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..data.schema import Schema
from ..data.schema_update import is_extension
from ..encoders import DenseEncoder, IDEmbedding, VectorEncoder

__all__ = ["grow_model"]

VOCAB_FREE = (DenseEncoder, VectorEncoder)
"""Built-in encoders whose parameters do not depend on vocabulary sizes."""


def _check_encoders(model: Any) -> None:
    """Raise naming the first encoder that cannot follow a vocabulary change."""
    for i, enc in enumerate(model.encoders):
        name = type(enc).__name__
        if isinstance(enc, (IDEmbedding, *VOCAB_FREE)):
            continue
        if not callable(getattr(enc, "grow", None)):
            raise NotImplementedError(
                f"encoder {i} ({name}) does not say how to follow a vocabulary change: give it "
                "a grow(old_schema, new_schema) method (it may do nothing when the encoder does "
                "not depend on vocabulary sizes)"
            )


def grow_model(
    model: Any,
    new_schema: Schema,
    noise_std: float = 0.0,
    seed: int | None = None,
) -> dict[str, int]:
    """Grow ``model`` (in place) to ``new_schema``, an extension of ``model.schema``.

    ``new_schema`` comes from ``model.schema.update(df)``: the same features, tasks and
    statistics, each vocabulary starting with the old values in the same order. Every
    embedding table gets the new ids' rows, initialised from that vocabulary's trained OOV row
    (plus ``N(0, noise_std²)`` noise when ``noise_std > 0``, drawn from ``seed``); the known rows
    keep their values bit for bit. Sequences sharing a vocabulary (``vocab_from``) read the
    grown rows of their owner. The calibration's rate tables give new ids the OOV id's rate.
    Every other parameter, the calibration map included, is left as it is. Afterwards
    ``model.schema`` is ``new_schema``: encode new data with it.

    Args:
        model: a :class:`~recsys_mt.model.MultiTaskModel`.
        new_schema: the grown schema.
        noise_std: std of the noise added to the new rows (0: exact copies of the OOV row, so
            predictions are unchanged right after growing).
        seed: seed of that noise.

    Returns:
        The number of rows added per vocabulary (``{"item_id": 12, ...}``; 0 for unchanged
        ones).

    Raises:
        TypeError: ``new_schema`` is not a Schema.
        ValueError: ``new_schema`` is not an extension of ``model.schema`` (the reasons are
            listed), or ``noise_std`` is negative or not finite.
        NotImplementedError: a custom encoder without a ``grow`` method.

    Nothing changes when an error is raised: the arguments are checked first, and custom
    encoders grow before the library's own, so a custom ``grow`` that raises (and changed
    nothing itself) leaves the model as it was. A :class:`~recsys_mt.train.Trainer` then
    continues training with a new optimiser (see the docs page on optimiser state).
    """
    if not isinstance(new_schema, Schema):
        raise TypeError(f"new_schema must be a recsys_mt Schema, got {type(new_schema).__name__}")
    if not isinstance(noise_std, (int, float)) or not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    old_schema = model.schema
    why = is_extension(old_schema, new_schema)
    if why:
        raise ValueError(
            "new_schema is not model.schema with grown vocabularies (make it with "
            "model.schema.update(df)): " + "; ".join(why)
        )
    _check_encoders(model)
    generator = None
    if noise_std:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    # custom encoders first: if one raises, the library's encoders have not changed yet
    own = [type(enc).__module__.startswith("recsys_mt.") for enc in model.encoders]
    for enc in [e for e, o in zip(model.encoders, own) if not o] + [
        e for e, o in zip(model.encoders, own) if o
    ]:
        if isinstance(enc, IDEmbedding):
            enc.grow(old_schema, new_schema, float(noise_std), generator)
        elif callable(getattr(enc, "grow", None)):
            enc.grow(old_schema, new_schema)
    prior = getattr(model, "rate_prior", None)
    if prior is not None:
        prior.grow(new_schema)  # new ids: the OOV id's rate, as while they were unknown
    model.schema = new_schema
    return {
        name: new_schema.vocabularies_[name].size - old_schema.vocabularies_[name].size
        for name in new_schema.vocabularies_
    }
