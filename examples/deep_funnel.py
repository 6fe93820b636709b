"""Deep funnel: funnel statistics, an AITM head and calibrated probabilities on synthetic data.

Run: python examples/deep_funnel.py [--impressions N] [--epochs E] [--plot reliability.png]

1. ``FunnelStats`` gives every row the item's and the category's smoothed click, purchase and
   repurchase rates (training rows: out-of-fold values, so no row sees its own label);
2. two heads are trained with the library's defaults (early stopping on the mean stage AUC,
   Platt calibration on the validation rows at the end of fit, with a stage's rate of one id
   feature as a second input where that helps): ``MMoE`` and ``AITM``, which passes each
   stage's representation down the funnel;
3. the test metrics (AUC, log loss, ECE per stage) are printed next to the uncalibrated ones,
   and ``--plot`` draws a reliability diagram (needs the ``plot`` extra);
4. before serving, ``rm.refresh`` folds the validation period into the MMoE model (its new ids
   grow the vocabularies; two more epochs over both periods; the FunnelStats of the training
   rows stay leakage-safe) and the test metrics are printed again.
"""

import argparse
import copy

import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data


def build_schema() -> rm.Schema:
    return rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=30),
            rm.FunnelStats("item_stats", entity="item_id"),
            rm.FunnelStats("category_stats", entity="category", tasks=["cvr", "repurchase"]),
        ],
        tasks=[
            rm.Task("ctr", label="click"),
            rm.Task("cvr", label="purchase", given="ctr"),
            rm.Task("repurchase", label="repurchase", given="cvr"),
        ],
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--impressions", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--plot", default=None, help="write a reliability diagram to this file")
    args = p.parse_args(argv)

    data = make_funnel_data(n_users=500, n_items=300, n_impressions=args.impressions, seed=1)
    train_df, val_df, test_df = data.split((0.8, 0.1, 0.1), by="time")
    schema = build_schema()
    train = schema.fit_transform(train_df)  # out-of-fold statistics for the training rows
    val, test = schema.transform(val_df), schema.transform(test_df)
    print("dense inputs:", schema.dense_columns)

    results = {}
    for name, head in {
        "mmoe": rm.MMoE(num_experts=4, expert_dims=(128, 64)),
        "aitm": rm.AITM(tower_dims=(128, 64)),
    }.items():
        torch.manual_seed(0)
        model = rm.MultiTaskModel(schema, head=head)
        trainer = rm.Trainer(
            max_epochs=args.epochs, progress_bar=False, callbacks=[rm.EarlyStopping()]
        )
        trainer.fit(model, train, val)  # ends with Platt calibration on `val`
        calibrated = model.evaluate(test).set_index(["task", "metric"])["value"]
        uncalibrated = copy.deepcopy(model).calibrate(val, method="none")  # for comparison
        raw = uncalibrated.evaluate(test).set_index(["task", "metric"])["value"]
        print(f"\n{name}: {len(trainer.history)} epochs; rate prior {model.rate_prior.columns}")
        columns = ("AUC", "(raw)", "logloss", "(raw)", "ECE", "(raw)")
        print(f"{'task':<12}" + "".join(f"{c:>{10 if c == 'logloss' else 8}}" for c in columns))
        for task in ("ctr", "cvr", "ctcvr", "repurchase"):
            c, r = calibrated[task], raw[task]
            print(
                f"{task:<12}{c['auc']:>8.4f}{r['auc']:>8.4f}{c['logloss']:>10.4f}"
                f"{r['logloss']:>8.4f}{c['ece']:>8.4f}{r['ece']:>8.4f}"
            )
        results[name] = {"calibrated": calibrated, "raw": raw}
        if args.plot and name == "mmoe":
            pred = model.predict(test)
            ax = rm.metrics.plot_reliability(
                test_df["click"].to_numpy(), {"ctr (calibrated)": pred["ctr"].to_numpy()}
            )
            ax.figure.savefig(args.plot, dpi=120, bbox_inches="tight")
            print(f"reliability diagram written to {args.plot}")
        if name == "mmoe":  # before serving: fold the validation period into the model
            growth = rm.refresh(model, train_df, val_df, epochs=2, progress_bar=False)
            refreshed = model.evaluate(test_df).set_index(["task", "metric"])["value"]
            print(f"after rm.refresh ({growth.total_added} new ids from the validation rows):")
            for task in ("ctr", "cvr", "ctcvr", "repurchase"):
                r = refreshed[task]
                print(f"{task:<12}{r['auc']:>8.4f}{r['logloss']:>10.4f}")
            results["mmoe+refresh"] = {"calibrated": refreshed}
    return results


if __name__ == "__main__":
    main()
