"""Id dropout matched to the validation rows' unseen ids (``IDEmbedding(match_unseen=True)``)."""

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data import OOV_ID, PAD_ID
from recsys_mt.encoders.unseen_rates import MAX_RATE, matched_dropout_rates, oov_share
from recsys_mt.metrics import logloss


def test_oov_share_ignores_padding():
    ids = torch.tensor([[PAD_ID, OOV_ID, 5], [OOV_ID, 7, PAD_ID]])
    assert oov_share(ids) == pytest.approx(2 / 4)
    assert oov_share(torch.full((3,), PAD_ID)) == 0.0


def test_matched_rates_hand_computed():
    def ids(n_oov, n):
        return torch.tensor([OOV_ID] * n_oov + [9] * (n - n_oov))

    rates = matched_dropout_rates(
        {
            "new_in_val": (ids(0, 10), ids(8, 10)),  # 80 % unseen in val, none in train
            "net_of_train": (ids(5, 10), ids(7, 10)),  # (0.7 - 0.5) / 0.5 = 0.4
            "same_as_train": (ids(5, 10), ids(5, 10)),  # nothing to add: the floor
            "all_new": (ids(0, 10), ids(10, 10)),  # capped
            "streaming": (None, ids(3, 10)),  # train share unknown: taken as 0
        },
        floor=0.1,
    )
    assert rates == pytest.approx(
        {
            "new_in_val": 0.8,
            "net_of_train": 0.4,
            "same_as_train": 0.1,
            "all_new": MAX_RATE,
            "streaming": 0.3,
        }
    )
    # dropping known ids at the rate makes the training share of unknown ids the val share
    t, v = 0.5, 0.7
    assert t + (1 - t) * rates["net_of_train"] == pytest.approx(v)


def temporal_frames(n=4000, seed=0):
    """Training users 0..49; validation rows mostly (75 %) from users 50..99 never seen."""
    rng = np.random.default_rng(seed)

    def rows(users):
        item = rng.integers(0, 30, len(users))
        click = (rng.random(len(users)) < 0.2 + 0.5 * (item % 2)).astype(int)
        hist = [list(rng.integers(0, 30, 3)) for _ in users]
        return pd.DataFrame({"user_id": users, "item_id": item, "hist": hist, "click": click})

    train = rows(rng.integers(0, 50, n))
    m = n // 4
    val_users = np.where(rng.random(m) < 0.75, rng.integers(50, 100, m), rng.integers(0, 50, m))
    return train, rows(val_users)


def fitted_schema(train):
    s = rm.Schema(
        [
            rm.Sparse("user_id", dim=8),
            rm.Sparse("item_id", dim=8),
            rm.Sequence("hist", vocab_from="item_id", max_len=3),
        ],
        tasks=[rm.Task("ctr", "click")],
        min_groups=None,
        oov_warn_rate=None,  # most validation users are new, on purpose
    )
    return s.fit(train)


def test_trainer_sets_rates_from_validation_and_dropout_follows_them():
    train_df, val_df = temporal_frames()
    s = fitted_schema(train_df)
    train, val = s.transform(train_df), s.transform(val_df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(s, head=rm.SharedBottom(bottom_dims=(8,)))
    emb = model.encoders[0]
    assert emb.match_unseen and emb.dropout_rates == {}
    rm.Trainer(max_epochs=1, progress_bar=False).fit(model, train, val)
    share = float((val["sparse"][:, 0] == OOV_ID).float().mean())
    assert 0.7 < share < 0.8
    assert emb.dropout_rates["user_id"] == pytest.approx(share)
    assert emb.dropout_rates["item_id"] == 0.1  # every val item is known: the floor
    assert emb.dropout_rates["hist"] == 0.1
    # in training mode the user column is dropped at its rate, the item column at the floor
    big = s.transform(pd.concat([train_df] * 10, ignore_index=True))
    emb.train()
    dropped = emb._drop_ids(big["sparse"], emb._column_rates())
    got = (dropped == OOV_ID).float().mean(0)
    assert got[0] == pytest.approx(share, abs=0.02)
    assert got[1] == pytest.approx(0.1, abs=0.02)
    emb.eval()
    assert torch.equal(emb._drop_ids(big["sparse"], emb._column_rates()), big["sparse"])


def test_off_switches_keep_the_floor():
    train_df, val_df = temporal_frames(n=1000)
    s = fitted_schema(train_df)
    train, val = s.transform(train_df), s.transform(val_df)
    off = rm.MultiTaskModel(s, encoders=[rm.IDEmbedding(match_unseen=False)])
    rm.Trainer(max_epochs=1, progress_bar=False).fit(off, train, val)
    assert off.encoders[0].dropout_rates == {}
    no_val = rm.MultiTaskModel(s)
    rm.Trainer(max_epochs=1, progress_bar=False).fit(no_val, train)
    assert no_val.encoders[0].dropout_rates == {}
    zero = rm.MultiTaskModel(s, encoders=[rm.IDEmbedding(id_dropout=0.0)])
    rm.Trainer(max_epochs=1, progress_bar=False).fit(zero, train, val)
    assert zero.encoders[0].dropout_rates["item_id"] == 0.0
    assert zero.encoders[0].dropout_rates["user_id"] > 0.7


def test_match_unseen_is_saved(tmp_path):
    train_df, _ = temporal_frames(n=500)
    s = fitted_schema(train_df)
    model = rm.MultiTaskModel(s, encoders=[rm.IDEmbedding(match_unseen=False)])
    model.save_pretrained(tmp_path)
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path)
    assert loaded.encoders[0].match_unseen is False


def test_matched_dropout_learns_a_better_unknown_user():
    """New users' rows are scored through the OOV user row: matching the dropout to the
    validation rows' 75 % new users gives them a lower log loss than the 10 % floor."""
    rng = np.random.default_rng(1)
    train_df, val_df = temporal_frames(n=6000)
    # each known user has a strong own click bias, which a new user's row cannot know
    bias = rng.normal(0, 2.0, 100)

    def relabel(df):
        z = -0.5 + 1.5 * (df["item_id"] % 2) + bias[df["user_id"]]
        return df.assign(click=(rng.random(len(df)) < 1 / (1 + np.exp(-z))).astype(int))

    train_df, val_df = relabel(train_df), relabel(val_df)
    test_df = relabel(temporal_frames(n=8000, seed=3)[1])
    s = fitted_schema(train_df)
    train, val, test = (s.transform(d) for d in (train_df, val_df, test_df))
    new = (test["sparse"][:, 0] == OOV_ID).numpy()
    losses = {}
    for match in (False, True):
        torch.manual_seed(0)
        model = rm.MultiTaskModel(
            s,
            encoders=[rm.IDEmbedding(match_unseen=match)],
            head=rm.SharedBottom(bottom_dims=(16,)),
            auto_calibrate=None,
        )
        rm.Trainer(max_epochs=6, batch_size=256, progress_bar=False, seed=0).fit(model, train, val)
        p = model.predict(test)["ctr"].to_numpy()[new]
        y = test_df["click"].to_numpy()[new]
        losses[match] = logloss(y, np.clip(p, 1e-6, 1 - 1e-6))
    assert losses[True] < losses[False] - 0.005, losses


def test_streaming_training_source_counts_only_the_validation_share():
    """From a streaming source the trainer passes ``train=None``: the training share is 0."""
    train_df, val_df = temporal_frames(n=1000)
    s = fitted_schema(train_df)
    val = s.transform(val_df)
    emb = rm.MultiTaskModel(s).encoders[0]
    emb.before_fit(None, val)
    share = float((val["sparse"][:, 0] == OOV_ID).float().mean())
    assert emb.dropout_rates["user_id"] == pytest.approx(share)
    assert emb.dropout_rates["item_id"] == 0.1
