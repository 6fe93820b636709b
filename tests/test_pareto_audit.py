"""Regression tests for Pareto-selection defects found by an audit: relative constraints on
negative objectives and the ``coverage@K`` objective on uncategorised candidates."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from recsys_mt.rerank import ObjectiveContext, ParetoResult
from recsys_mt.rerank.pareto_front import parse_constraint
from recsys_mt.rerank.pareto_objectives import resolve_objectives


def _result(columns: dict[str, list[float]], directions: dict[str, str]) -> ParetoResult:
    trials = pd.DataFrame({"trial": range(len(next(iter(columns.values())))), **columns})
    trials["front"] = True
    return ParetoResult(trials, directions, [], 5, None, lambda row: int(row.trial))


# -- 7. relative constraints -------------------------------------------------------------------
def test_relative_constraint_is_within_a_fraction_of_the_best_for_negative_values():
    result = _result(
        {"neg_price": [-16.03, -16.10, -16.50, -20.0], "gmv": [1.0, 2.0, 3.0, 4.0]},
        {"neg_price": "maximize", "gmv": "maximize"},
    )
    # within 1 % of the best -16.03: threshold -16.03 - 0.1603 = -16.1903 -> trials 0 and 1
    chosen = result.select(maximize="gmv", constraints={"neg_price": ">= 0.99 * max"})
    assert chosen == 1
    op, threshold = parse_constraint(">= 0.99 * max", result.trials.neg_price, "maximize")
    assert op == ">=" and threshold == pytest.approx(-16.1903)
    assert parse_constraint(">= 0.99 * best", result.trials.neg_price, "maximize")[1] == (
        pytest.approx(-16.1903)
    )
    with pytest.raises(ValueError, match=r"neg_price >= -16\.1903 \(2 of 4 trials\)"):
        result.select(maximize="gmv", constraints={"neg_price": ">= 0.99 * max", "gmv": ">= 3.5"})


def test_relative_constraint_mirrors_for_minimised_objectives_and_keeps_positive_ones():
    costs = pd.Series([-2.0, -1.95, -1.5], name="cost")
    # at most 5 % worse than the smallest -2.0: -2.0 + 0.1 = -1.9
    assert parse_constraint("<= 1.05 * min", costs, "minimize") == ("<=", pytest.approx(-1.9))
    assert parse_constraint("<= 1.05 * best", costs, "minimize") == ("<=", pytest.approx(-1.9))
    result = _result({"cost": costs.tolist(), "gmv": [1.0, 2.0, 3.0]}, {"cost": "minimize"})
    result.objectives["gmv"] = "maximize"
    assert result.select(maximize="gmv", constraints={"cost": "<= 1.05 * min"}) == 1
    # positive values: the plain fraction, as before
    positive = pd.Series([0.5, 2.0], name="ndcg")
    assert parse_constraint(">= 0.99 * max", positive, "maximize") == (">=", pytest.approx(1.98))
    assert parse_constraint("<= 1.05 * min", positive, "minimize") == ("<=", pytest.approx(0.525))
    assert parse_constraint(">= max", costs, "maximize") == (">=", -1.5)
    assert parse_constraint(">= -3", costs, "maximize") == (">=", -3.0)


# -- 3. coverage@K with uncategorised candidates -----------------------------------------------
def test_coverage_objective_ignores_uncategorised_candidates():
    categories = torch.tensor([[-1, -1, 0, 1]])  # -1: category missing in the frame
    mask = torch.ones(1, 4, dtype=torch.bool)
    data = dict(
        predictions={},
        labels={},
        mask=mask,
        item_vectors=None,
        categories=categories,
        price="price",
    )
    (objective,) = resolve_objectives(["coverage@3"], data, k=3)
    context = ObjectiveContext(
        predictions={},
        labels={},
        mask=mask,
        scores=torch.zeros(1, 4),
        item_vectors=None,
        categories=categories,
        k=3,
    )
    assert objective(torch.tensor([[0, 1, 2]]), context) == 0.5  # 1 category / min(3, C=2)
    assert objective(torch.tensor([[2, 3, 0]]), context) == 1.0
    assert objective(torch.tensor([[0, 1, -1]]), context) == 0.0  # a list without categories
