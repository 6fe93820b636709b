"""Funnel-aware per-task losses and loss balancers."""

from .balancers import Balancer, StaticWeights, UncertaintyWeighting
from .funnel import SUPERVISIONS, chain_log_probs, funnel_losses, log1mexp

__all__ = [
    "SUPERVISIONS",
    "Balancer",
    "StaticWeights",
    "UncertaintyWeighting",
    "chain_log_probs",
    "funnel_losses",
    "log1mexp",
]
