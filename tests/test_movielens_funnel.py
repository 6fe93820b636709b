"""The real-data benchmark's funnel builder: running user counters never see the row's own
rating or any rating of the same second, and travel unchanged to the row's sampled negatives."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from movielens_funnel import GENRES, build_funnel  # noqa: E402


def _raw(seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n_users, n_movies, n = 6, 80, 300
    pairs = rng.permutation(n_users * n_movies)[:n]
    data = pd.DataFrame(
        {
            "user_id": pairs // n_movies + 1,
            "movie_id": pairs % n_movies + 1,
            "rating": rng.integers(1, 6, n),
            # few distinct seconds: many ratings of one user share a timestamp
            "timestamp": rng.integers(0, 25, n) * 1000,
        }
    )
    flags = rng.random((n_movies, len(GENRES))) < 0.2
    flags[:, 0] |= ~flags.any(axis=1)
    items = pd.DataFrame(flags.astype(int), columns=list(GENRES))
    items.insert(0, "movie_id", np.arange(1, n_movies + 1))
    items["release_date"] = "01-Jan-1995"
    items["movie_title"] = [f"movie {i}" for i in range(1, n_movies + 1)]
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1),
            "age": rng.integers(15, 70, n_users),
            "gender": rng.choice(["M", "F"], n_users),
            "occupation": rng.choice(["a", "b"], n_users),
            "zip_code": [f"{z:05d}" for z in rng.integers(0, 99999, n_users)],
        }
    )
    return {"data": data, "items": items, "users": users}


def test_running_user_counters_count_strictly_earlier_ratings_only() -> None:
    raw = _raw()
    f = build_funnel(raw, "uniform", seed=0, cold_frac=0.0)
    rows = pd.concat([f.train, f.val, f.test], ignore_index=True)
    ratings = raw["data"]
    early = ratings.sort_values("timestamp", kind="stable").head(int(len(ratings) * 0.8))
    p_buy = (early.rating >= 4).mean()
    p_rebuy = (early.rating == 5).sum() / (early.rating >= 4).sum()
    checked = 0
    for r in rows.itertuples():
        mine = ratings[(ratings.user_id == r.user_id) & (ratings.timestamp < r.timestamp)]
        assert r.user_clicks == len(mine)
        n_buy, n_five = int((mine.rating >= 4).sum()), int((mine.rating == 5).sum())
        assert r.user_buy_rate == np.float32((n_buy + 2 * p_buy) / (len(mine) + 2))
        assert r.user_rebuy_rate == np.float32((n_five + 2 * p_rebuy) / (n_buy + 2))
        checked += 1
    assert checked == len(rows) > 300
    # the rates are functions of those counts alone: equal counts give equal rates
    keyed = rows.assign(
        k=rows.groupby(["user_id", "timestamp"]).ngroup(),
    )
    per_moment = keyed.groupby("k")[["user_clicks", "user_buy_rate", "user_rebuy_rate"]].nunique()
    assert (per_moment == 1).all().all()  # a negative carries its rating's counters


def test_a_rating_never_moves_its_own_counters() -> None:
    raw = _raw(1)
    base = build_funnel(raw, "uniform", seed=0, cold_frac=0.0)
    flipped = {k: v.copy() for k, v in raw.items()}
    last = flipped["data"]["timestamp"].idxmax()
    old = flipped["data"].loc[last, "rating"]
    flipped["data"].loc[last, "rating"] = 1 if old >= 4 else 5
    other = build_funnel(flipped, "uniform", seed=0, cold_frac=0.0)
    cols = ["user_clicks", "user_buy_rate", "user_rebuy_rate"]
    # the latest rating is nobody's "earlier" rating: no row's counters change
    np.testing.assert_array_equal(base.test[cols].to_numpy(), other.test[cols].to_numpy())


def test_genres_lists_every_flagged_genre() -> None:
    raw = _raw(2)
    f = build_funnel(raw, "uniform", seed=0, cold_frac=0.0)
    items = raw["items"].set_index("movie_id")
    for r in f.train.head(50).itertuples():
        flagged = [g for g in GENRES if items.loc[r.movie_id, g]]
        assert list(r.genres) == flagged
        assert r.genre == flagged[0]
