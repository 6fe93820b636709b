"""FunnelStats: leakage-safe target encoding (out-of-fold / time-ordered), exact numbers, JSON."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data import SchemaError
from recsys_mt.metrics import auc

TASKS = [rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")]


def logit(p):
    return math.log(p) - math.log1p(-p)


def noise_df(n=20000, seed=0):
    """Entities with 1-3 rows each; labels independent of everything."""
    rng = np.random.default_rng(seed)
    entity = np.repeat(np.arange(n), rng.integers(1, 4, n))[:n]
    click = (rng.random(n) < 0.3).astype(int)
    return pd.DataFrame(
        {
            "user_id": rng.permutation(entity),
            "t": rng.integers(0, 50, n),
            "click": click,
            "purchase": click * (rng.random(n) < 0.5),
        }
    )


def signal_df(users=200, rows=150, seed=0):
    """Users with their own true CTR / CVR."""
    rng = np.random.default_rng(seed)
    ctr, cvr = rng.beta(2, 6, users), rng.beta(2, 4, users)
    user = rng.permutation(np.repeat(np.arange(users), rows))
    click = (rng.random(len(user)) < ctr[user]).astype(int)
    buy = click * (rng.random(len(user)) < cvr[user])
    df = pd.DataFrame({"user_id": user, "click": click, "purchase": buy})
    return df, ctr[user], cvr[user]


def tiny_df():
    return pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "a", "b", "b"],
            "t": [0, 1, 1, 2, 0, 1],
            "click": [1, 1, 0, 1, 0, 0],
            "purchase": [1, 0, 0, 0, 0, 0],
        }
    )


def fs_schema(*features, tasks=TASKS, **kw):
    return rm.Schema([*features, rm.FunnelStats("fs", "user_id", **kw)], tasks=list(tasks))


def col(frame, name):
    return frame.column(name).double().numpy()


@pytest.mark.parametrize("time_column", [None, "t"])
def test_label_noise_is_not_leaked_to_training_rows(time_column):
    df = noise_df()
    click, buy = np.array(df.click), np.array(df.purchase)
    clicked = click == 1
    schema = fs_schema(time_column=time_column)
    # the naive path (full tables on the training rows) is predictive of pure noise ...
    schema.fit(df)
    with pytest.warns(UserWarning, match=r"FunnelStats \['fs'\].*target leakage"):
        naive = schema.transform(df)
    naive_auc = auc(click, col(naive, "fs.ctr_rate"))
    assert naive_auc > 0.6
    assert auc(buy[clicked], col(naive, "fs.cvr_rate")[clicked]) > 0.6
    # ... as is a hand-made in-sample encoding
    g = df.groupby("user_id").click
    in_sample = (g.transform("sum") + 20 * click.mean()) / (g.transform("size") + 20)
    assert auc(click, np.array(in_sample)) == pytest.approx(naive_auc)
    # fit_transform's out-of-fold / time-ordered values carry no label signal
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = schema.fit_transform(df)
    assert abs(auc(click, col(frame, "fs.ctr_rate")) - 0.5) < 0.03
    assert abs(auc(click, col(frame, "fs.ctr_count")) - 0.5) < 0.03
    assert abs(auc(buy[clicked], col(frame, "fs.cvr_rate")[clicked]) - 0.5) < 0.03
    # and they vary (many rows do see other rows of their entity)
    assert np.unique(col(frame, "fs.ctr_rate")).size >= 4


def test_real_signal_on_held_out_rows_matches_oracle():
    df, true_ctr, true_cvr = signal_df()
    cut = len(df) * 2 // 3
    train, test = df.iloc[:cut], df.iloc[cut:].reset_index(drop=True)
    schema = fs_schema(smoothing=5.0)
    schema.fit_transform(train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # held-out rows: no leak warning
        frame = schema.transform(test)
    click, buy = np.array(test.click), np.array(test.purchase)
    oracle = auc(click, true_ctr[cut:])
    got = auc(click, col(frame, "fs.ctr_rate"))
    assert oracle > 0.65 and abs(got - oracle) < 0.02
    clicked = click == 1
    oracle = auc(buy[clicked], true_cvr[cut:][clicked])
    got = auc(buy[clicked], col(frame, "fs.cvr_rate")[clicked])
    assert oracle > 0.6 and abs(got - oracle) < 0.03


def test_hand_computed_tables_and_unknown_entity():
    schema = fs_schema(smoothing=2.0).fit(tiny_df())
    table = schema.funnel_stats_["fs"]
    # priors: ctr = 3 clicks / 6 rows; cvr = 1 purchase / 3 clicks
    np.testing.assert_allclose(table.prior, [0.5, 1 / 3])
    new = pd.DataFrame({"user_id": ["a", "b", "zz", None]})
    raw = table.raw_values(new)
    expected = [
        # a: ctr (3 + 2·0.5) / (4 + 2); cvr (1 + 2/3) / (3 + 2) -- CVR counts clicked rows only
        [logit(4 / 6), math.log1p(4), logit(1 / 3), math.log1p(3)],
        # b: ctr (0 + 1) / (2 + 2); cvr: no clicks -> the prior, count 0
        [logit(1 / 4), math.log1p(2), logit(1 / 3), 0.0],
        [logit(0.5), 0.0, logit(1 / 3), 0.0],  # unknown -> prior, count 0
        [logit(0.5), 0.0, logit(1 / 3), 0.0],  # missing -> same
    ]
    np.testing.assert_allclose(raw, expected, rtol=1e-12)
    # transform standardises with the stored statistics; invert it to get the raw values back
    frame = schema.transform(new)
    assert (
        frame.meta["dense"]
        == schema.dense_columns
        == [
            "fs.ctr_rate",
            "fs.ctr_count",
            "fs.cvr_rate",
            "fs.cvr_count",
        ]
    )
    back = frame["dense"].double().numpy() * table.std + table.mean
    np.testing.assert_allclose(back, expected, rtol=1e-5, atol=1e-6)


def test_out_of_fold_with_one_row_per_fold_is_leave_one_out():
    df = tiny_df()
    schema = fs_schema(smoothing=2.0, folds=len(df), unseen_rate=0.0)
    frame = schema.fit_transform(df)
    g = df.groupby("user_id")
    s = len(df) / (len(df) - 1)  # out-of-fold sums are scaled to the full tables' size
    ctr_num = (g.click.transform("sum") - df.click) * s  # everything except the row itself
    ctr_den = (g.click.transform("size") - 1) * s
    joint = df.click * df.purchase
    cvr_num = (joint.groupby(df.user_id).transform("sum") - joint) * s
    cvr_den = ctr_num

    def rate(num, den, prior):  # logit of (num + 2·prior) / (den + 2)
        r = (num + 2 * prior) / (den + 2)
        return np.log(r) - np.log1p(-r)

    raw = np.stack(
        [
            rate(ctr_num, ctr_den, 0.5),
            np.log1p(ctr_den),
            rate(cvr_num, cvr_den, 1 / 3),
            np.log1p(cvr_den),
        ],
        axis=1,
    )
    # row 0 by hand: the other a-rows have clicks 1, 0, 1 and no purchase
    expected = [logit((2 * s + 1) / (3 * s + 2)), math.log1p(3 * s)]
    expected += [logit((2 / 3) / (2 * s + 2)), math.log1p(2 * s)]
    np.testing.assert_allclose(raw[0], expected)
    std = raw.std(axis=0)
    table = schema.funnel_stats_["fs"]
    np.testing.assert_allclose(table.mean, raw.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(table.std, std, rtol=1e-12)
    np.testing.assert_allclose(
        frame["dense"].double().numpy(), (raw - raw.mean(axis=0)) / std, atol=1e-5
    )


def test_time_ordered_values_by_hand():
    df = tiny_df()  # times a: 0, 1, 1, 2; b: 0, 1
    schema = fs_schema(smoothing=2.0, time_column="t", unseen_rate=0.0)
    frame = schema.fit_transform(df)
    table = schema.funnel_stats_["fs"]
    raw = frame["dense"].double().numpy() * table.std + table.mean
    p, q = 0.5, 1 / 3
    expected = [
        [logit(p), 0, logit(q), 0],  # a@0: nothing earlier -> prior
        [logit(2 / 3), math.log1p(1), logit(5 / 9), math.log1p(1)],  # a@1 sees a@0 only
        [logit(2 / 3), math.log1p(1), logit(5 / 9), math.log1p(1)],  # tie with a@1 excluded
        [logit(3 / 5), math.log1p(3), logit(5 / 12), math.log1p(2)],  # a@2 sees three rows
        [logit(p), 0, logit(q), 0],  # b@0
        [logit(1 / 3), math.log1p(1), logit(q), 0],  # b@1 sees an unclicked row
    ]
    np.testing.assert_allclose(raw, expected, atol=1e-5)
    # the row order does not matter
    perm = [5, 2, 0, 4, 3, 1]
    again = fs_schema(smoothing=2.0, time_column="t", unseen_rate=0.0).fit_transform(df.iloc[perm])
    torch.testing.assert_close(again["dense"], frame["dense"][perm])


def test_dense_columns_order_and_crossed_entity_round_trip(tmp_path):
    df, _, _ = signal_df(users=40, rows=10)
    rng = np.random.default_rng(1)
    df["category"] = rng.choice(["shoes", "hats", "bags"], len(df))
    df["price"] = rng.lognormal(2, 1, len(df))
    df["t"] = rng.integers(0, 30, len(df))
    schema = rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.FunnelStats("uc", ["user_id", "category"], tasks=["cvr"], counts=False),
            rm.Dense("price", transform="log1p"),
            rm.FunnelStats("u", "user_id", time_column="t"),
        ],
        tasks=TASKS,
    )
    assert schema.dense_columns == [
        "price",
        "uc.cvr_rate",
        "u.ctr_rate",
        "u.ctr_count",
        "u.cvr_rate",
        "u.cvr_count",
    ]
    train, test = df.iloc[:300], df.iloc[300:].copy()
    test.iloc[0, test.columns.get_loc("category")] = "socks"  # an unknown crossed value
    frame = schema.fit_transform(train)
    assert frame["dense"].shape == (300, 6) and frame.meta["dense"] == schema.dense_columns
    plain = rm.Schema([rm.Dense("price", transform="log1p")], tasks=TASKS).fit_transform(train)
    assert torch.equal(frame.column("price"), plain.column("price"))  # Dense come first, as is
    d = json.loads(schema.to_json())["funnel_stats"]["uc"]["entity"]
    assert d["kinds"] == ["int", "str"]
    assert isinstance(d["values"][0][0], int) and isinstance(d["values"][1][0], str)
    schema.to_json(tmp_path / "schema.json")
    loaded = rm.Schema.from_json(tmp_path / "schema.json")
    assert loaded == schema
    a, b = schema.transform(test), loaded.transform(test)
    for k in a.keys():
        assert torch.equal(a[k], b[k]), k
    # a crossed entity is only known as the pair
    raw = loaded.funnel_stats_["uc"].raw_values(test.iloc[:1])
    assert raw[0, 0] == pytest.approx(logit(loaded.funnel_stats_["uc"].prior[0]))


def test_model_trains_and_round_trips(tmp_path):
    df, _, _ = signal_df(users=30, rows=20)
    schema = rm.Schema(
        [rm.Sparse("user_id", dim=4), rm.FunnelStats("fs", "user_id", folds=3)], tasks=TASKS
    )
    train = schema.fit_transform(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom())
    dense = [e for e in model.encoders if isinstance(e, rm.DenseEncoder)]
    assert len(dense) == 1 and dense[0].out_dim == len(schema.dense_columns) == 4
    rm.Trainer(max_epochs=1, batch_size=128, progress_bar=False).fit(model, train)
    test = df.iloc[:50].drop(columns=["click", "purchase"])  # serving: no labels needed
    before = model.predict(test)
    model.save_pretrained(tmp_path / "m")
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m")
    assert loaded.schema == schema
    pd.testing.assert_frame_equal(before, loaded.predict(test), check_exact=True)
    # a FunnelStats-only schema gets a DenseEncoder alone
    only = rm.Schema([rm.FunnelStats("fs", "user_id", counts=False)], tasks=TASKS).fit(df)
    model = rm.MultiTaskModel(only)
    assert [type(e) for e in model.encoders] == [rm.DenseEncoder]
    assert model.encoders[0].out_dim == 2


def test_spec_and_schema_errors_name_the_culprit():
    with pytest.raises(ValueError, match=r"task 'nope' is not a task.*\['ctr', 'cvr'\]"):
        rm.Schema([rm.FunnelStats("fs", "user_id", tasks=["nope"])], tasks=TASKS)
    with pytest.raises(ValueError, match=r"task 'dwell' is a regression task.*\['ctr'\]"):
        rm.Schema(
            [rm.FunnelStats("fs", "user_id", tasks=["dwell"])],
            tasks=[rm.Task("ctr", "click"), rm.Task("dwell", loss="mse")],
        )
    with pytest.raises(ValueError, match="needs a binary task"):
        rm.Schema([rm.FunnelStats("fs", "user_id")], tasks=[rm.Task("dwell", loss="mse")])
    with pytest.raises(ValueError, match="smoothing must be > 0"):
        rm.FunnelStats("fs", "user_id", smoothing=0)
    with pytest.raises(ValueError, match="folds must be an int >= 2"):
        rm.FunnelStats("fs", "user_id", folds=1)
    with pytest.raises(ValueError, match="outputs column 'fs.ctr_rate'"):
        fs_schema(rm.Dense("fs.ctr_rate"))


def test_bad_frames_raise_before_state_changes():
    df = tiny_df()
    cases = [
        (df.drop(columns=["user_id"]), r"missing column\(s\) \['user_id'\]"),
        (df.drop(columns=["t"]), r"missing time column 't' of FunnelStats\('fs'\)"),
        (df.assign(t=[0, 1, None, 2, 0, 1]), "time column 't'.*missing at row 2"),
        (
            df.drop(columns=["click", "purchase"]),
            r"FunnelStats \['fs'\] learn from the labels.*\['click', 'purchase'\]",
        ),
    ]
    for bad, match in cases:
        schema = fs_schema(time_column="t")
        with pytest.raises(SchemaError, match=match):
            schema.fit(bad)
        assert not schema.is_fitted and schema.funnel_stats_ is None
    # transform needs the entity column but no labels; the id kind must match
    schema = fs_schema().fit(df)
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['user_id'\]"):
        schema.transform(df.drop(columns=["user_id"]))
    assert schema.transform(df.iloc[:3][["user_id"]])["dense"].shape == (3, 4)
    with pytest.raises(SchemaError, match="entity column 'user_id' of FunnelStats.*str ids"):
        schema.transform(pd.DataFrame({"user_id": [1, 2]}))


def test_unseen_rate_rows_get_the_unknown_entity_values():
    rng = np.random.default_rng(1)
    click = (rng.random(10_000) < 0.3).astype(int)
    df = pd.DataFrame(  # 200 entities with 50 rows each: out-of-fold counts are never 0
        {"user_id": np.repeat(np.arange(200), 50), "click": click, "purchase": click}
    )
    schema = fs_schema(unseen_rate=0.2, seed=3)
    frame = schema.fit_transform(df)
    table = schema.funnel_stats_["fs"]
    raw = frame["dense"].double().numpy() * table.std + table.mean
    unknown = df.assign(user_id=-1)  # an entity value never seen at fit
    expected = table.raw_values(unknown.iloc[:1])[0]
    is_unknown = np.isclose(raw, expected, atol=1e-4).all(axis=1)  # float32 round trip
    assert abs(is_unknown.mean() - 0.2) < 0.03
    none = fs_schema(unseen_rate=0.0, seed=3).fit_transform(df)
    raw0 = none["dense"].double().numpy()
    assert not np.allclose(raw0, frame["dense"].double().numpy())
