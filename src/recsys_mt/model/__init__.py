"""``MultiTaskModel``, checkpoint helpers, funnel evaluation and post-hoc calibration."""

from .calibration import apply_calibration, fit_calibration
from .calibration_api import NothingToCalibrate
from .evaluation import evaluate_funnel
from .multitask import CheckpointError, MultiTaskModel

__all__ = [
    "CheckpointError",
    "MultiTaskModel",
    "NothingToCalibrate",
    "apply_calibration",
    "evaluate_funnel",
    "fit_calibration",
]
