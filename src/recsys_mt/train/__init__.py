"""Training: the :class:`Trainer` loop, callbacks, loggers, optimisers and DDP helpers.

Quick start::

    from recsys_mt.train import CSVLogger, EarlyStopping, ModelCheckpoint, Trainer

    trainer = Trainer(
        max_epochs=20,
        batch_size=4096,
        lr=1e-3,
        precision="auto",
        scheduler="cosine",
        warmup_steps=200,
        callbacks=[EarlyStopping("val/ctr_auc"), ModelCheckpoint("runs/ckpt", "val/ctr_auc")],
        loggers=[CSVLogger("runs/logs")],
    )
    trainer.fit(model, train_frame, val_frame)
    trainer.history[-1]          # {"epoch": ..., "train/loss": ..., "val/ctr_auc": ...}

The model only has to implement the :class:`TrainableModel` protocol (``training_step``,
``validation_metrics`` and optional hooks; see :mod:`recsys_mt.train.protocol`); see
:mod:`recsys_mt.train.trainer` for the loop, precision, sparse-embedding, distributed and
checkpoint behaviour.
"""

from . import distributed
from .callbacks import Callback, EarlyStopping, ModelCheckpoint
from .loggers import CSVLogger, Logger, TensorBoardLogger
from .optim import CombinedOptimizer, build_optimizer, build_scheduler, clip_grad_norm_, grad_norm
from .refresh import refresh
from .trainer import PRECISIONS, TrainableModel, Trainer, resolve_device, resolve_precision

__all__ = [
    "CSVLogger",
    "Callback",
    "CombinedOptimizer",
    "EarlyStopping",
    "Logger",
    "ModelCheckpoint",
    "PRECISIONS",
    "TensorBoardLogger",
    "TrainableModel",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "clip_grad_norm_",
    "distributed",
    "grad_norm",
    "refresh",
    "resolve_device",
    "resolve_precision",
]
