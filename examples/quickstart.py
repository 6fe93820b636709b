"""Quick start: a CTR → CVR → repurchase funnel with MMoE on synthetic data.

Run: python examples/quickstart.py [--impressions N] [--epochs E]
"""

import argparse
import tempfile

import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--impressions", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)

    data = make_funnel_data(n_users=1000, n_items=500, n_impressions=args.impressions)
    train_df, val_df, test_df = data.split((0.8, 0.1, 0.1))
    schema = rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Dense("age", nan="mean"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=30),
        ],
        tasks=[
            rm.Task("ctr", label="click"),
            rm.Task("cvr", label="purchase", given="ctr"),
            rm.Task("repurchase", label="repurchase", given="cvr"),
        ],
    )
    train = schema.fit_transform(train_df)
    val, test = schema.transform(val_df), schema.transform(test_df)

    torch.manual_seed(0)
    model = rm.MultiTaskModel(
        schema,
        head=rm.MMoE(num_experts=4, expert_dims=(128, 64)),
        supervision="entire_space",
        balancer=rm.UncertaintyWeighting(),
    )
    trainer = rm.Trainer(
        max_epochs=args.epochs, lr=2e-3, callbacks=[rm.EarlyStopping("val/ctcvr_auc", patience=1)]
    )
    trainer.fit(model, train, val)

    report = model.evaluate(test)
    print(report.pivot_table(index="task", columns="metric", values="value").round(4))
    print(model.predict(test).head())
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        loaded = rm.MultiTaskModel.from_pretrained(d)
        assert loaded.predict(test).equals(model.predict(test))
    return report


if __name__ == "__main__":
    main()
