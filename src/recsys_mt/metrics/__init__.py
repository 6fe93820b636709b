"""Evaluation metrics for multi-objective recommendation.

* :mod:`.classification`: ``auc``, ``gauc``, ``logloss``, ``calibration_ratio``, ``mse``,
  ``rmse`` (pointwise, return floats);
* :mod:`.ranking`: ``ndcg_at_k``, ``recall_at_k``, ``hit_rate_at_k``, ``mrr`` (rank by scores)
  and ``ndcg_of_ranking``, ``list_ndcg``, ``list_recall``, ``list_hit_rate``, ``list_mrr``
  (evaluate given lists), batched over users ``[B, N]``;
* :mod:`.diversity` and :mod:`.alpha_ndcg`: ``intra_list_diversity``, ``category_coverage``,
  ``category_entropy``, ``novelty``, ``alpha_ndcg`` for recommended lists ``[B, k]``;
* :mod:`.calibration`: ``ece`` (expected calibration error) and ``reliability_curve``;
* :mod:`.streaming`: ``StreamingAUC``, ``StreamingGAUC``, ``StreamingLogLoss``;
* :mod:`.plot`: ``plot_reliability`` (needs matplotlib, imported only when drawing).

All functions accept numpy arrays or torch tensors (any device). Only ``torch`` and ``numpy``
are imported; nothing else from ``recsys_mt``.
"""

from .alpha_ndcg import alpha_ndcg
from .calibration import ece, reliability_curve
from .classification import auc, calibration_ratio, gauc, logloss, mse, rmse
from .diversity import (
    category_coverage,
    category_entropy,
    intra_list_diversity,
    novelty,
)
from .plot import plot_reliability
from .ranking import (
    hit_rate_at_k,
    list_hit_rate,
    list_mrr,
    list_ndcg,
    list_recall,
    mrr,
    ndcg_at_k,
    ndcg_of_ranking,
    recall_at_k,
)
from .streaming import StreamingAUC, StreamingGAUC, StreamingLogLoss

__all__ = [
    "StreamingAUC",
    "StreamingGAUC",
    "StreamingLogLoss",
    "alpha_ndcg",
    "auc",
    "calibration_ratio",
    "category_coverage",
    "category_entropy",
    "ece",
    "gauc",
    "hit_rate_at_k",
    "intra_list_diversity",
    "list_hit_rate",
    "list_mrr",
    "list_ndcg",
    "list_recall",
    "logloss",
    "mrr",
    "mse",
    "ndcg_at_k",
    "ndcg_of_ranking",
    "novelty",
    "plot_reliability",
    "recall_at_k",
    "reliability_curve",
    "rmse",
]
