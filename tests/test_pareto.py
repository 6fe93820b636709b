"""Pareto search over objective fusion: front, selection, serialisation, inputs, errors."""

import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.metrics import list_ndcg
from recsys_mt.rerank import (
    MMR,
    Objective,
    ParetoInputs,
    WeightedProduct,
    load_fusion,
    non_dominated,
    pareto_inputs_from_frame,
    pareto_search,
)

pytest.importorskip("optuna")

B, N, K = 24, 20, 5
OBJECTIVES = ["ndcg@5:click", "ndcg@5:purchase", "gmv@5", "ild@5", "coverage@5"]


def make_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    ctr, cvr = torch.rand(B, N, generator=g), torch.rand(B, N, generator=g)
    price = torch.rand(B, N, generator=g) * 50 + 1
    click = (torch.rand(B, N, generator=g) < ctr).float()
    purchase = click * (torch.rand(B, N, generator=g) < cvr).float()
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[:4, 15:] = False  # a few users with fewer candidates
    return dict(
        predictions={"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr, "price": price},
        labels={"click": click, "purchase": purchase},
        mask=mask,
        item_vectors=torch.randn(B, N, 4, generator=g),
        categories=torch.randint(0, 4, (B, N), generator=g),
    )


def search(data=None, **kw):
    args = dict(
        weights={"ctr": (0.0, 2.0), "cvr": (0.0, 2.0), "price": (0.0, 1.0)},
        objectives=OBJECTIVES,
        reranker="mmr",
        reranker_range=(0.3, 1.0),
        k=K,
        n_trials=30,
        seed=1,
    )
    args.update(kw)
    return pareto_search(**(make_data() if data is None else data), **args)


@pytest.fixture(scope="module")
def result():
    return search()


def dominates(a, b, signs):
    a, b = np.asarray(a) * signs, np.asarray(b) * signs
    return bool((a >= b).all() and (a > b).any())


def test_front_is_exactly_the_non_dominated_trials(result):
    names = list(result.objectives)
    signs = np.array([1.0 if d == "maximize" else -1.0 for d in result.objectives.values()])
    values = result.trials[names].to_numpy()
    assert len(result.trials) == 30 and list(result.trials.trial) == list(range(30))
    for i, row in enumerate(values):
        dominated = any(dominates(other, row, signs) for other in values)
        assert result.trials.front.iloc[i] == (not dominated)
    front = result.front[names].to_numpy()
    assert len(front) == int(result.trials.front.sum()) > 0
    assert not any(dominates(v, f, signs) for f in front for v in values)
    assert {"trial", "w.ctr", "w.cvr", "w.price", "lambda", *names} <= set(result.trials)


def test_non_dominated_handles_ties_minimise_and_nan():
    values = [[3.0, 4.0], [3.0, 4.0], [1.0, 5.0], [2.0, float("nan")], [4.0, 8.0]]
    front = non_dominated(values, ["maximize", "minimize"])
    assert front.tolist() == [True, True, False, False, True]  # equal rows both stay
    front = non_dominated(values, ["maximize", "maximize"])
    assert front.tolist() == [False, False, False, False, True]
    with pytest.raises(ValueError, match="values must be"):
        non_dominated([[1.0]], ["maximize", "maximize"])


def test_select_honours_constraints_and_maximises_target(result):
    t = result.trials
    choice = result.select("ndcg@5:purchase", constraints={"ndcg@5:click": ">= 0.97 * max"})
    feasible = t[t["ndcg@5:click"] >= 0.97 * t["ndcg@5:click"].max()]
    assert choice.objectives["ndcg@5:click"] >= 0.97 * t["ndcg@5:click"].max()
    assert choice.objectives["ndcg@5:purchase"] == feasible["ndcg@5:purchase"].max()
    assert choice.trial in set(feasible.trial)

    threshold = float(t["gmv@5"].median())
    both = result.select("ild@5", constraints={"gmv@5": f">= {threshold}", "coverage@5": 0.0})
    ok = t[t["gmv@5"] >= threshold]
    assert both.objectives["gmv@5"] >= threshold
    assert both.objectives["ild@5"] == ok["ild@5"].max()
    low = result.select(minimize="gmv@5")
    assert low.objectives["gmv@5"] == t["gmv@5"].min()

    with pytest.raises(ValueError, match="no trial satisfies.*ndcg@5:click >="):
        result.select("gmv@5", constraints={"ndcg@5:click": ">= 1.01 * max"})
    with pytest.raises(ValueError, match="not understood"):
        result.select("gmv@5", constraints={"ndcg@5:click": "about 0.5"})
    with pytest.raises(KeyError, match="not an objective"):
        result.select("ndcg@10:click")
    with pytest.raises(ValueError, match="exactly one"):
        result.select("gmv@5", minimize="ild@5")


def test_obvious_tradeoff_front_spans_both_ends():
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(B, N, generator=g), torch.rand(B, N, generator=g)
    top_a = (a >= a.topk(3, dim=1).values[:, -1:]).float()  # label a: the 3 best by a
    top_b = (b >= b.topk(3, dim=1).values[:, -1:]).float()
    res = pareto_search(
        {"a": a, "b": b},
        {"a": top_a, "b": top_b},
        weights={"a": (0.0, 1.0), "b": (0.0, 1.0)},
        fusion="sum",
        objectives=["ndcg@3:a", "ndcg@3:b"],
        k=3,
        n_trials=25,
        seed=0,
    )
    front = res.front
    assert front["ndcg@3:a"].max() == pytest.approx(1.0)  # ranking by a alone is perfect for a
    assert front["ndcg@3:b"].max() == pytest.approx(1.0)
    best_a = front.loc[front["ndcg@3:a"].idxmax()]
    best_b = front.loc[front["ndcg@3:b"].idxmax()]
    assert best_a["ndcg@3:b"] < 0.6 and best_b["ndcg@3:a"] < 0.6  # the two ends differ
    assert best_a["w.b"] < best_a["w.a"] and best_b["w.a"] < best_b["w.b"]
    assert len(front) >= 3  # compromises in between


def test_json_round_trip_gives_the_same_rankings(result, tmp_path):
    data = make_data()
    inputs = ParetoInputs(**data)
    choice = result.select("gmv@5", constraints={"ndcg@5:click": ">= 0.9 * max"})
    path = tmp_path / "fusion.json"
    choice.to_json(path)
    loaded = load_fusion(path)
    assert loaded == choice
    assert isinstance(loaded.fusion, WeightedProduct) and isinstance(loaded.reranker, MMR)
    assert torch.equal(loaded.rank(inputs), choice.rank(inputs))
    # what Recommender.recommend(fusion=..., reranker=...) does with the same objectives
    kw = loaded.kwargs()
    scores = torch.as_tensor(kw["fusion"](data["predictions"])).float()
    scores = torch.where(data["mask"], scores, torch.tensor(float("-inf")))
    with torch.inference_mode():  # as in Recommender.recommend
        direct = kw["reranker"](
            scores,
            K,
            mask=data["mask"],
            item_vectors=data["item_vectors"],
            categories=data["categories"],
        )
    assert torch.equal(direct, loaded.rank(inputs))
    # the stored objective values are reproduced by re-evaluating the ranking
    click = list_ndcg(direct, data["labels"]["click"], k=K, mask=data["mask"])
    assert click == pytest.approx(choice.objectives["ndcg@5:click"])
    with pytest.raises(ValueError, match="not a recsys_mt.pareto_choice"):
        rm.ParetoChoice.from_config({"fusion": {}})


def test_custom_objective_callable():
    def mean_price(ranked, ctx):
        price = ctx.gather(ctx.predictions["price"], ranked, fill=math.nan)
        return float(price.nanmean())

    def n_slots(ranked, ctx):
        assert ranked.shape == (B, K) and ctx.k == K and ctx.scores.shape == (B, N)
        return float((ranked >= 0).sum())

    res = search(
        objectives=[
            "ndcg@5:click",
            Objective("mean_price", mean_price, "minimize"),
            ("n", n_slots),
        ],
        reranker=None,
        n_trials=12,
    )
    assert res.objectives == {"ndcg@5:click": "maximize", "mean_price": "minimize", "n": "maximize"}
    assert (res.trials["n"] == B * K).all()  # every user has >= K valid candidates
    best = res.select(minimize="mean_price")
    ranked = best.rank(ParetoInputs(**make_data()))
    data = make_data()
    expected = data["predictions"]["price"].gather(1, ranked).mean()
    assert best.objectives["mean_price"] == pytest.approx(float(expected))
    with pytest.raises(TypeError, match="'bad' returned"):
        search(objectives=[("bad", lambda r, c: "x")], reranker=None, n_trials=2)


def test_seeded_search_is_deterministic(result):
    again = search()
    pd.testing.assert_frame_equal(again.trials, result.trials)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"objectives": ["ndcg@5:click", "precision@5"]}, ValueError, "objectives: unknown"),
        ({"objectives": ["ndcg@5:view"]}, ValueError, "not among labels"),
        ({"objectives": ["ndcg@9:click"]}, ValueError, "cut-off 9"),
        ({"objectives": ["gmv@5"], "price": "cost"}, ValueError, r"predictions\['cost'\]"),
        ({"objectives": []}, ValueError, "non-empty list"),
        ({"objectives": ["ild@5", "ild@5"]}, ValueError, "listed twice"),
        ({"weights": {"ctr": (0, 1), "pctr": (0, 1)}}, ValueError, r"weights: \['pctr'\]"),
        ({"weights": {"ctr": (2, 1)}}, ValueError, r"weights\['ctr'\]"),
        ({"weights": {"ctr": "high"}}, TypeError, r"weights\['ctr'\]"),
        ({"fusion": "max"}, ValueError, "fusion must be one of"),
        ({"reranker": "greedy"}, ValueError, "reranker must be one of"),
        ({"reranker_range": (0.5, 1.5)}, ValueError, "lambda_"),
        ({"k": 0}, ValueError, "k must be"),
        ({"n_trials": 0}, ValueError, "n_trials must be"),
    ],
)
def test_bad_arguments_raise_clearly(change, error, match):
    with pytest.raises(error, match=match):
        search(**change)


def test_bad_inputs_raise_clearly():
    data = make_data()
    bad = dict(data, labels={**data["labels"], "click": data["labels"]["click"][:, :5]})
    with pytest.raises(ValueError, match=r"labels\['click'\] has shape \(24, 5\)"):
        search(bad)
    bad = dict(data, predictions={**data["predictions"], "ctr": torch.rand(N)})
    with pytest.raises(ValueError, match=r"predictions\['ctr'\] must have shape \[B, N\]"):
        search(bad)
    empty = {name: t[:, :0] for name, t in data["predictions"].items()}
    labels = {name: t[:, :0] for name, t in data["labels"].items()}
    with pytest.raises(ValueError, match="predictions: no candidates"):
        search(dict(predictions=empty, labels=labels))
    with pytest.raises(ValueError, match="mask: every candidate is masked"):
        search(dict(data, mask=torch.zeros(B, N, dtype=torch.bool)))
    with pytest.raises(ValueError, match="item_vectors"):
        search(dict(data, item_vectors=None))
    with pytest.raises(ValueError, match="needs item_vectors"):
        search(dict(data, item_vectors=None), reranker=None)
    with pytest.raises(ValueError, match="needs categories"):
        search(dict(data, categories=None), reranker=None)
    with pytest.raises(ValueError, match="labels: required"):
        pareto_search(data["predictions"], weights={"ctr": 1.0}, objectives=["gmv@5"])
    nan = dict(data, predictions={**data["predictions"], "cvr": data["predictions"]["cvr"] * 0})
    nan["predictions"]["cvr"][2, 3] = float("nan")
    with pytest.raises(ValueError, match="user row 2, candidate 3"):
        search(nan, fusion="sum", reranker=None)


def test_missing_optuna_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"recsys-mt\[tune\]"):
        search()


def test_plot_highlights_the_front(result, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    path = tmp_path / "front.png"
    ax = result.plot("ndcg@5:click", "gmv@5", path=path)
    assert path.stat().st_size > 0
    assert ax.get_xlabel() == "ndcg@5:click" and len(ax.collections) == 2
    with pytest.raises(KeyError, match="not an objective"):
        result.plot("ndcg@5:click", "ild@10")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"recsys-mt\[plot\]"):
        result.plot("ndcg@5:click", "gmv@5")


def test_inputs_from_long_frame_and_search_on_them():
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2", "u3", "u3", "u3"],
            "item_id": [10, 11, 12, 10, 13, 11, 12, 13],
            "ctr": [0.9, 0.2, 0.5, 0.3, 0.8, 0.6, 0.1, 0.4],
            "price": [5.0, 50.0, 10.0, 5.0, 20.0, 50.0, 10.0, 20.0],
            "click": [1, 0, 0, 0, 1, 1, 0, 1],
            "category": ["a", "b", "a", "a", "c", "b", "a", "c"],
        }
    )
    vectors = np.eye(14, 3, dtype=np.float32) + 0.1
    inputs = pareto_inputs_from_frame(
        frame, predictions=["ctr", "price"], labels=["click"], category="category", vectors=vectors
    )
    assert inputs.shape == (3, 3) and inputs.users == ["u1", "u2", "u3"]
    assert inputs.mask.tolist() == [[True] * 3, [True, True, False], [True] * 3]
    assert inputs.predictions["ctr"][1].tolist() == pytest.approx([0.3, 0.8, 0.0])
    assert inputs.categories.tolist() == [[0, 1, 0], [0, 2, -1], [1, 0, 2]]
    assert inputs.items[1].tolist() == [10, 13, None]
    assert torch.equal(inputs.item_vectors[2, 0], torch.from_numpy(vectors[11]))
    res = pareto_search(
        inputs,
        weights={"ctr": (0.5, 2.0), "price": (0.0, 1.0)},
        objectives=["ndcg@2:click", "revenue@2:click", "coverage@2"],
        k=2,
        n_trials=6,
    )
    assert len(res.trials) == 6
    with pytest.raises(ValueError, match="come from the ParetoInputs"):
        pareto_search(inputs, mask=inputs.mask, weights={"ctr": 1.0}, objectives=["coverage@2"])
    with pytest.raises(ValueError, match=r"\(user, item\) = \['u1', 10\] more than once"):
        pareto_inputs_from_frame(pd.concat([frame, frame.head(1)]), predictions=["ctr"], labels=[])
    with pytest.raises(KeyError, match="labels: column"):
        pareto_inputs_from_frame(frame, predictions=["ctr"], labels=["purchase"])
