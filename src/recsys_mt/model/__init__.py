"""``MultiTaskModel`` and checkpoint helpers."""

from .multitask import CheckpointError, MultiTaskModel, evaluate_funnel

__all__ = ["CheckpointError", "MultiTaskModel", "evaluate_funnel"]
