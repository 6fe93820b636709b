"""Objective fusion and batched diversity re-rankers.

Fusion (:mod:`.fusion`) turns per-objective scores into one ranking score; the re-rankers
(:class:`MMR`, :class:`CategoryCoverage`, :class:`DPP`) pick ``k`` candidates per user from
``scores [B, N]`` in one batched greedy pass and return candidate positions ``[B, min(k, N)]``
(``-1`` = padding).  :mod:`.reference` holds plain per-user NumPy versions used by the tests and
the benchmark.  :func:`pareto_search` (:mod:`.pareto`) searches fusion weights and a re-ranker's
trade-off for the Pareto front of list-level objectives.  See ``docs/reranking.md`` and
``docs/pareto.md``.
"""

from .base import (
    PAD,
    Reranker,
    RerankInputs,
    gather_selected,
    normalize_relevance,
    release_workspace,
    relevance_order,
)
from .coverage import CategoryCoverage, category_distribution
from .dpp import DPP, dpp_tolerance
from .fusion import (
    DEFAULT_PRODUCT_EPS,
    CallableFusion,
    Fusion,
    WeightedProduct,
    WeightedSum,
)
from .mmr import MMR
from .pareto import ParetoResult, pareto_search
from .pareto_choice import ParetoChoice, load_fusion
from .pareto_data import ParetoInputs, pareto_inputs_from_frame
from .pareto_front import non_dominated
from .pareto_objectives import Objective, ObjectiveContext

__all__ = [
    "PAD",
    "Reranker",
    "RerankInputs",
    "MMR",
    "CategoryCoverage",
    "DPP",
    "gather_selected",
    "normalize_relevance",
    "relevance_order",
    "release_workspace",
    "category_distribution",
    "dpp_tolerance",
    "Fusion",
    "WeightedSum",
    "WeightedProduct",
    "CallableFusion",
    "DEFAULT_PRODUCT_EPS",
    "pareto_search",
    "ParetoResult",
    "ParetoChoice",
    "ParetoInputs",
    "pareto_inputs_from_frame",
    "load_fusion",
    "non_dominated",
    "Objective",
    "ObjectiveContext",
]
