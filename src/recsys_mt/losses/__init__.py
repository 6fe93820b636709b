"""Funnel-aware per-task losses, counterfactual CVR risks and loss / gradient balancers."""

from .balancers import DWA, Balancer, StaticWeights, UncertaintyWeighting
from .counterfactual import COUNTERFACTUALS, dr_cvr_loss, ips_cvr_loss
from .funnel import (
    SUPERVISIONS,
    behavioural_calibration,
    chain_log_probs,
    funnel_counts,
    funnel_losses,
    log1mexp,
)
from .gradient_balancers import (
    MGDA,
    CAGrad,
    GradientBalancer,
    GradNorm,
    ParetoWeights,
    PCGrad,
    balance_gradients,
    task_gradients,
)

__all__ = [
    "CAGrad",
    "COUNTERFACTUALS",
    "DWA",
    "GradNorm",
    "GradientBalancer",
    "MGDA",
    "PCGrad",
    "ParetoWeights",
    "SUPERVISIONS",
    "Balancer",
    "StaticWeights",
    "UncertaintyWeighting",
    "balance_gradients",
    "behavioural_calibration",
    "chain_log_probs",
    "dr_cvr_loss",
    "funnel_counts",
    "funnel_losses",
    "ips_cvr_loss",
    "log1mexp",
    "task_gradients",
]
