"""Funnel-aware per-task losses, counterfactual CVR risks and loss balancers."""

from .balancers import Balancer, StaticWeights, UncertaintyWeighting
from .counterfactual import COUNTERFACTUALS, dr_cvr_loss, ips_cvr_loss
from .funnel import (
    SUPERVISIONS,
    behavioural_calibration,
    chain_log_probs,
    funnel_counts,
    funnel_losses,
    log1mexp,
)

__all__ = [
    "COUNTERFACTUALS",
    "SUPERVISIONS",
    "Balancer",
    "StaticWeights",
    "UncertaintyWeighting",
    "behavioural_calibration",
    "chain_log_probs",
    "dr_cvr_loss",
    "funnel_counts",
    "funnel_losses",
    "ips_cvr_loss",
    "log1mexp",
]
