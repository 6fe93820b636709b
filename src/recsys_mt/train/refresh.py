"""Refreshing a trained model with a newer labelled period before it serves.

A model fitted on a training period, with a later validation period for early stopping and
calibration, has never trained on the rows closest to the ones it will score. With a temporal
split those are the most informative rows there are: the newest users rate in them, and
items' fortunes change. :func:`refresh` folds such a period in, after the fact:

1. the vocabularies grow with the new period's ids (``model.schema.update(new)`` and
   ``model.grow``): its new users and items get rows, copies of the trained "unknown" rows, so
   nothing is scored differently until training separates them;
2. training continues, from the trained weights, on the training rows and the new period
   together for ``epochs`` epochs, without a validation frame.

:class:`~recsys_mt.data.FunnelStats` keep the tables learned from the training rows, and the
training rows get the same leakage-safe values as ``fit_transform`` gave them (never their own
labels). The calibration (map and rate prior) fitted by the first ``fit`` is kept: no
held-out rows are left to refit it. After a refresh the new period is no longer held out:
evaluate on a later period, not on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..data.funnel_stats import fit_funnel_stats, transform_funnel_stats
from ..data.vocab import SchemaError
from .trainer import Trainer

__all__ = ["refresh"]


def refresh(
    model: Any,
    train: pd.DataFrame,
    new: pd.DataFrame,
    epochs: int = 2,
    **trainer_kwargs: Any,
) -> Any:
    """Fold the labelled rows of a newer period into a trained model (in place).

    Args:
        model: a trained :class:`~recsys_mt.model.MultiTaskModel`.
        train: the rows it was trained on (a DataFrame, as given to ``model.schema``).
        new: the newer labelled rows, typically the validation period used by ``fit``.
        epochs: epochs of continued training on ``train`` and ``new`` together (>= 1).
        **trainer_kwargs: passed to :class:`Trainer` (``seed``, ``lr``, ``batch_size``,
            ``num_threads``, ``progress_bar``, ...); ``max_epochs`` is ``epochs``.

    Returns:
        The :class:`~recsys_mt.data.SchemaGrowth` of the vocabulary update (``.added`` per
        feature).

    Raises:
        ValueError: ``epochs`` is not a positive int, or ``trainer_kwargs`` holds
            ``max_epochs``.
        TypeError: ``train`` or ``new`` is not a DataFrame.
        SchemaError: ``new`` or ``train`` lacks a feature or label column (from the schema).

    Nothing is changed when an error is raised before training starts: the inputs are checked
    and both periods encoded with the grown schema before the model grows.

    Example::

        trainer.fit(model, schema.transform(train_df), schema.transform(val_df))
        growth = rm.refresh(model, train_df, val_df, epochs=2, seed=0)
        model.predict(next_period_df)
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"refresh: epochs must be a positive int, got {epochs!r}")
    if "max_epochs" in trainer_kwargs:
        raise ValueError("refresh: pass epochs=..., not max_epochs")
    for name, frame in (("train", train), ("new", new)):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(
                f"refresh: {name} must be a pandas DataFrame (its ids grow the vocabularies), "
                f"got {type(frame).__name__}"
            )
        try:  # each frame on its own, so an error names the frame and its own row
            model.schema._check_df(frame, labels=True)
            model.schema._labels(frame)
        except SchemaError as e:
            raise SchemaError(f"refresh: {name}: {e}") from None
    new_schema, growth = model.schema.update(new)
    funnel = None
    if new_schema.funnel_stats:
        # as fit_transform gave them: the training rows their leakage-safe (out-of-fold or
        # time-ordered) values, never their own labels; the new rows the training tables'
        _, own = fit_funnel_stats(new_schema, train, has_labels=True)
        funnel = np.concatenate([own, transform_funnel_stats(new_schema, new)])
    both = new_schema._transform(pd.concat([train, new], ignore_index=True), True, funnel)
    trainer = Trainer(max_epochs=epochs, **trainer_kwargs)
    model.grow(new_schema)
    trainer.fit(model, both)
    return growth
