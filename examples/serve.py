"""Serve a model over HTTP: train on synthetic data, save it, build the FastAPI app.

Run: python examples/serve.py [--impressions N] [--run] [--host 127.0.0.1] [--port 8000]

Needs the ``serve`` extra (``pip install recsys-mt[serve]``). With ``--run`` the app is served
with uvicorn until interrupted (try ``curl localhost:8000/health``); without it, a few requests
go through FastAPI's in-process ``TestClient`` and the answers are printed.
"""

import argparse
import json
import tempfile

import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.serving import create_app


def train(impressions: int) -> tuple[rm.MultiTaskModel, object]:
    """A small CTR → CVR funnel model and the synthetic world it was trained on."""
    data = make_funnel_data(n_users=300, n_items=200, n_impressions=impressions, seed=0)
    schema = rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Dense("age", nan="mean"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=20),
        ],
        tasks=[rm.Task("ctr", label="click"), rm.Task("cvr", label="purchase", given="ctr")],
    )
    frame = schema.fit_transform(data.impressions)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.MMoE(num_experts=2, expert_dims=(32,)))
    rm.Trainer(max_epochs=1, progress_bar=False, device="cpu", seed=0).fit(model, frame)
    return model, data


def request_body(data, n_users: int = 2, n_candidates: int = 20, k: int = 5) -> dict:
    """``POST /recommend`` JSON for the first users of ``data`` over the first items."""
    users = []
    for row in data.users.head(n_users).itertuples():
        features = {
            "user_id": int(row.user_id),
            "age": None if row.age != row.age else float(row.age),  # NaN -> null
            "hist_items": [int(i) for i in row.hist_items],
        }
        candidates = data.items.item_id.head(n_candidates).tolist()
        users.append({"features": features, "candidates": candidates})
    return {"users": users, "k": k}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--impressions", type=int, default=50_000)
    p.add_argument("--run", action="store_true", help="serve with uvicorn until interrupted")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)

    model, data = train(args.impressions)
    catalog = data.items[["item_id", "category", "price"]]
    with tempfile.TemporaryDirectory() as model_dir:
        model.save_pretrained(model_dir)
        app = create_app(model_dir, catalog, default_k=10, max_candidates=500)
        if args.run:
            import uvicorn

            uvicorn.run(app, host=args.host, port=args.port)
            return None
        from fastapi.testclient import TestClient

        with TestClient(app) as client:
            health = client.get("/health").json()
            print(json.dumps(health, indent=1))
            answer = client.post("/recommend", json=request_body(data)).json()
            print(json.dumps(answer["results"][0], indent=1))
            bad = request_body(data, n_users=1, k=0)
            bad["users"][0]["features"]["age"] = "thirty"
            error = client.post("/recommend", json=bad)
            print(error.status_code, error.json()["error"])
    return {"health": health, "answer": answer, "error": (error.status_code, error.json())}


if __name__ == "__main__":
    main()
