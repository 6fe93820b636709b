"""A synthetic purchase funnel (impression -> click -> purchase -> repurchase) with known truth.

:func:`make_funnel_data` draws a small e-commerce world from a latent model and returns a
:class:`FunnelData`: an impression log with labels *and* the exact probabilities the labels were
drawn from, so that a model's scores can be compared with the oracle (e.g. the AUC of
``true_ctr`` against ``click`` is the best AUC any CTR model can reach on that data).

Only numpy and pandas are used.

Latent model
------------
``d = latent_dim``, ``C = n_categories``, ``sigma(x) = 1 / (1 + exp(-x))``; every ``N(.)`` and
``eps`` below is an independent standard normal draw.

Items ``i`` (``n_items``):

* category ``c_i`` (every category gets at least one item when ``n_items >= C``; the sizes
  follow a Dirichlet draw), category centroid ``m_c ~ N(0, I_d)``;
* latent vector ``v_i = m_{c_i} + 0.6 * N(0, I_d)``;
* quality ``q_i ~ N(0, 1)`` and popularity ``pop_i ~ N(0, 0.5^2)``;
* price ``log p_i = L_{c_i} + 0.35 q_i + 0.4 eps`` with a category price level
  ``L_c ~ U(log 4, log 300)`` (so price is lognormal per category and higher for better items;
  rounded to cents, at least 0.5);
  ``z_i`` is the standardised ``log p_i`` over the catalog.

Users ``u`` (``n_users``):

* latent vector ``w_u ~ N(0, I_d)``, click bias ``b_u ~ N(0, 0.5^2)``,
  purchase bias ``g_u ~ N(0, 0.3^2)``, loyalty ``l_u ~ N(0, 0.4^2)``;
* age ``age_u ~ N(38, 12^2)`` rounded and clipped to ``[16, 80]``; the *observed* age is NaN
  for ``round(age_nan_frac * n_users)`` random users (the latent model still uses the true age);
* price sensitivity ``s_u = exp(0.35 eps - 0.25 (age_u - 38) / 12)`` (younger users are more
  price sensitive);
* affinity ``a_ui = w_u . v_i / sqrt(d)``;
* history ``hist_items``: ``H_u ~ U{hist_len[0], ..., hist_len[1]}`` distinct items drawn
  without replacement with probabilities proportional to ``exp(2 a_ui)`` (Gumbel top-k), listed
  in a random order read as oldest -> newest. It therefore carries the user's taste. All
  impression rows of a user share one list object: copy it before mutating.

Impressions (``n_impressions``): the user is drawn with probability proportional to an activity
``exp(0.8 eps)``; the item is, with probability ``targeted_frac``, drawn proportional to
``exp(1.5 a_ui)`` (a "recommender" that shows relevant items) and otherwise proportional to
``exp(pop_i)`` (popular items for everyone), so shown items mix high and low affinities.
Timestamps are strictly increasing over about 30 days in row order.

Probabilities (``e1, e2, e3`` are per-impression ``N(0, noise^2)`` draws: unobservable context
that is part of the truth but cannot be predicted from the features):

* ``true_ctr = sigma(B_ctr + interaction * 0.7 a_ui + b_u + pop_i + 0.3 q_i - 0.2 z_i + e1)``
* ``true_cvr = sigma(B_cvr + 1.0 q_i - 0.8 s_u z_i + 0.35 interaction * a_ui + g_u + e2)``
  (p(purchase | click))
* ``true_repurchase = sigma(B_rep + R_{c_i} + 0.6 q_i + l_u + e3)`` (p(repurchase | purchase))
  where ``R_c = +1.4`` for consumable categories (coffee, shampoo, vitamins, ...) and
  ``R_c ~ N(-0.6, 0.3^2)`` otherwise;
* ``true_ctcvr = true_ctr * true_cvr``.

The intercepts ``B_*`` are calibrated (safeguarded Newton search) so that the funnel's expected
rates equal the requested bases: ``mean(true_ctr) = ctr_base``, ``E[true_cvr | click] = cvr_base``
(mean weighted by ``true_ctr``) and ``E[true_repurchase | purchase] = repurchase_base`` (weighted by
``true_ctcvr``). Labels are the chain ``click ~ Bern(true_ctr)``,
``purchase ~ Bern(true_cvr)`` if clicked else 0, ``repurchase ~ Bern(true_repurchase)`` if
purchased else 0.

Titles: ``"<brand> <words> <noun>"`` where the noun is a per-category word (category 3 ->
``"sneakers"`` / ``"trainers"``), and the words are 1-2 fillers (colours, materials, styles)
mixed with quality adjectives: each of two high-quality slots ("premium", "durable",
"organic", ...) is filled with probability ``sigma(1.5 q - 1)`` resp. ``sigma(1.5 q - 2.5)``, and
likewise low-quality adjectives ("basic", "budget", ...) with ``-q``. Text is thus informative
about quality (and, through the noun, about the consumable categories), but not a perfect
predictor. Titles are made unique where a few re-draws allow.

With the defaults (seed 0) the funnel has CTR ~0.15, CVR | click ~0.22, repurchase | purchase
~0.32 and oracle AUCs of about 0.80 for each of the three stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .synthetic_checks import (
    _check_float,
    _check_fractions,
    _check_int,
    _check_rate,
    _check_unit,
)
from .synthetic_sampling import _calibrate_intercept, _sample_by_logits, _sample_histories, _sigmoid
from .synthetic_titles import (
    CATEGORY_NOUNS,
    HIGH_QUALITY_WORDS,
    LOW_QUALITY_WORDS,
    _category_names,
    _make_titles,
)

__all__ = [
    "CATEGORY_NOUNS",
    "HIGH_QUALITY_WORDS",
    "LOW_QUALITY_WORDS",
    "FunnelData",
    "make_funnel_data",
]

_T0 = 1_700_000_000  # first timestamp (seconds)
_SPAN = 30 * 86_400  # about 30 days of impressions


@dataclass
class FunnelData:
    """Output of :func:`make_funnel_data`.

    Attributes:
        impressions: one row per impression: ``user_id, item_id, category, price, age,
            hist_items, title, timestamp, click, purchase, repurchase, true_ctr, true_cvr,
            true_repurchase, true_ctcvr``.
        items: the catalog: ``item_id, category, category_name, price, title`` plus latent
            ``quality`` and ``popularity`` (for analysis only).
        users: ``user_id, age`` (observed, with NaNs), ``hist_items`` plus latent
            ``price_sensitivity``, ``bias`` and ``activity``.
        info: the generator's parameters, calibrated intercepts, latent vectors and the set of
            consumable categories.
    """

    impressions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)

    def split(
        self,
        fractions: tuple[float, ...] = (0.8, 0.1, 0.1),
        seed: int = 0,
        by: str = "random",
    ) -> tuple[pd.DataFrame, ...]:
        """Split the impression rows into ``len(fractions)`` disjoint parts covering all rows.

        ``by="random"`` shuffles the rows with ``seed`` (each part keeps the original row order);
        ``by="time"`` cuts the log in timestamp order, so every row of part ``k`` is older than
        every row of part ``k + 1`` (``seed`` is unused). Part sizes are
        ``round(cumsum(fractions) * n)`` differences. Each part has a fresh ``RangeIndex``.
        """
        fr = _check_fractions(fractions)
        if by not in ("random", "time"):
            raise ValueError(f"by must be 'random' or 'time', got {by!r}")
        df = self.impressions
        n = len(df)
        if by == "time":
            order = np.argsort(df["timestamp"].to_numpy(), kind="stable")
        else:
            order = np.random.default_rng(seed).permutation(n)
        bounds = np.rint(np.cumsum(fr) * n).astype(np.int64)
        bounds[-1] = n
        starts = np.concatenate([[0], bounds[:-1]])
        parts = []
        for a, b in zip(starts, bounds):
            rows = order[a:b]
            if by == "random":
                rows = np.sort(rows)
            parts.append(df.iloc[rows].reset_index(drop=True))
        return tuple(parts)


def make_funnel_data(
    n_users: int = 2000,
    n_items: int = 1000,
    n_categories: int = 20,
    n_impressions: int = 200_000,
    *,
    seed: int = 0,
    hist_len: tuple[int, int] = (5, 30),
    latent_dim: int = 8,
    ctr_base: float = 0.15,
    cvr_base: float = 0.22,
    repurchase_base: float = 0.32,
    interaction: float = 1.0,
    noise: float = 0.0,
    age_nan_frac: float = 0.01,
    targeted_frac: float = 0.5,
) -> FunnelData:
    """Draw a synthetic impression log with labels and their true probabilities.

    See the module docstring for the latent model and formulas.

    Args:
        n_users, n_items, n_categories, n_impressions: sizes (each >= 1).
        seed: everything is a deterministic function of the arguments and this seed.
        hist_len: inclusive ``(min, max)`` length of each user's ``hist_items``
            (``0 <= min <= max <= n_items``).
        latent_dim: dimension of the user and item latent vectors.
        ctr_base: target ``mean(true_ctr)``.
        cvr_base: target p(purchase | click) of the funnel.
        repurchase_base: target p(repurchase | purchase) of the funnel.
        interaction: weight of the user-item affinity in the click (and, at 0.35x, purchase)
            logit; 0 leaves only user and item main effects.
        noise: std of per-impression logit noise added to each stage (default 0). It stands for
            context no feature shows; with noise > 0 the oracle AUC (of the true probabilities)
            is an upper bound no model can reach, because the noise is part of the truth.
        age_nan_frac: fraction of users whose observed ``age`` is NaN.
        targeted_frac: fraction of impressions whose item is drawn by affinity (the rest are
            drawn by popularity).

    Returns:
        a :class:`FunnelData`.
    """
    n_users = _check_int("n_users", n_users, 1)
    n_items = _check_int("n_items", n_items, 1)
    n_categories = _check_int("n_categories", n_categories, 1)
    n_impressions = _check_int("n_impressions", n_impressions, 1)
    latent_dim = _check_int("latent_dim", latent_dim, 1)
    seed = _check_int("seed", seed, 0)
    try:
        h_lo, h_hi = hist_len
    except (TypeError, ValueError):
        raise ValueError(f"hist_len must be a (min, max) pair, got {hist_len!r}") from None
    h_lo = _check_int("hist_len[0]", h_lo, 0)
    h_hi = _check_int("hist_len[1]", h_hi, 0)
    if h_lo > h_hi:
        raise ValueError(f"hist_len must satisfy min <= max, got {hist_len!r}")
    if h_hi > n_items:
        raise ValueError(f"hist_len max ({h_hi}) exceeds n_items ({n_items})")
    ctr_base = _check_rate("ctr_base", ctr_base)
    cvr_base = _check_rate("cvr_base", cvr_base)
    repurchase_base = _check_rate("repurchase_base", repurchase_base)
    interaction = _check_float("interaction", interaction)
    noise = _check_float("noise", noise)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    age_nan_frac = _check_unit("age_nan_frac", age_nan_frac)
    targeted_frac = _check_unit("targeted_frac", targeted_frac)

    rng = np.random.default_rng(seed)
    d = latent_dim
    sqrt_d = math.sqrt(d)

    # ---- items -------------------------------------------------------------------------
    centroids = rng.standard_normal((n_categories, d))
    cat_weights = rng.dirichlet(np.full(n_categories, 2.0))
    n_fixed = min(n_items, n_categories)
    category = np.concatenate(
        [
            rng.permutation(n_categories)[:n_fixed],
            rng.choice(n_categories, size=n_items - n_fixed, p=cat_weights),
        ]
    )
    category = rng.permutation(category).astype(np.int64)
    item_vecs = centroids[category] + 0.6 * rng.standard_normal((n_items, d))
    quality = rng.standard_normal(n_items)
    popularity = 0.5 * rng.standard_normal(n_items)
    price_level = rng.uniform(math.log(4.0), math.log(300.0), size=n_categories)
    log_price = price_level[category] + 0.35 * quality + 0.4 * rng.standard_normal(n_items)
    price = np.maximum(np.round(np.exp(log_price), 2), 0.5)
    lp = np.log(price)
    z_price = (lp - lp.mean()) / (lp.std() if lp.std() > 0 else 1.0)
    nouns, consumable = _category_names(n_categories)
    rep_cat = np.where(consumable, 1.4, -0.6 + 0.3 * rng.standard_normal(n_categories))
    titles = _make_titles(rng, category, quality, nouns)

    # ---- users -------------------------------------------------------------------------
    user_vecs = rng.standard_normal((n_users, d))
    user_bias = 0.5 * rng.standard_normal(n_users)
    buy_bias = 0.3 * rng.standard_normal(n_users)
    loyalty = 0.4 * rng.standard_normal(n_users)
    age_true = np.clip(np.round(38.0 + 12.0 * rng.standard_normal(n_users)), 16.0, 80.0)
    sensitivity = np.exp(0.35 * rng.standard_normal(n_users) - 0.25 * (age_true - 38.0) / 12.0)
    activity = np.exp(0.8 * rng.standard_normal(n_users))
    age_obs = age_true.copy()
    n_nan = int(round(age_nan_frac * n_users))
    if n_nan:
        age_obs[rng.choice(n_users, size=n_nan, replace=False)] = np.nan
    lengths = rng.integers(h_lo, h_hi + 1, size=n_users)
    hist = _sample_histories(rng, user_vecs, item_vecs, 2.0, lengths)

    # ---- impressions -------------------------------------------------------------------
    uid = rng.choice(n_users, size=n_impressions, p=activity / activity.sum()).astype(np.int64)
    targeted = rng.random(n_impressions) < targeted_frac
    pop_p = np.exp(popularity - popularity.max())
    iid = rng.choice(n_items, size=n_impressions, p=pop_p / pop_p.sum()).astype(np.int64)
    if targeted.any():
        iid[targeted] = _sample_by_logits(rng, user_vecs, item_vecs, 1.5, uid[targeted])
    gaps = 1 + rng.poisson(max(0.0, _SPAN / n_impressions - 1.0), size=n_impressions)
    timestamp = _T0 + np.cumsum(gaps, dtype=np.int64) - gaps[0]

    aff = np.einsum("nd,nd->n", user_vecs[uid], item_vecs[iid]) / sqrt_d
    q = quality[iid]
    zp = z_price[iid]
    e = noise * rng.standard_normal((3, n_impressions))
    z_ctr = interaction * 0.7 * aff + user_bias[uid] + popularity[iid] + 0.3 * q - 0.2 * zp + e[0]
    z_cvr = 1.0 * q - 0.8 * sensitivity[uid] * zp + 0.35 * interaction * aff + buy_bias[uid] + e[1]
    z_rep = rep_cat[category[iid]] + 0.6 * q + loyalty[uid] + e[2]

    b_ctr = _calibrate_intercept(z_ctr, ctr_base, None)
    true_ctr = _sigmoid(z_ctr + b_ctr)
    b_cvr = _calibrate_intercept(z_cvr, cvr_base, true_ctr)
    true_cvr = _sigmoid(z_cvr + b_cvr)
    true_ctcvr = true_ctr * true_cvr
    b_rep = _calibrate_intercept(z_rep, repurchase_base, true_ctcvr)
    true_rep = _sigmoid(z_rep + b_rep)

    r = rng.random((3, n_impressions))
    click = r[0] < true_ctr
    purchase = click & (r[1] < true_cvr)
    repurchase = purchase & (r[2] < true_rep)

    titles_arr = np.asarray(titles, dtype=object)
    impressions = pd.DataFrame(
        {
            "user_id": uid,
            "item_id": iid,
            "category": category[iid],
            "price": price[iid],
            "age": age_obs[uid],
            "hist_items": hist[uid],
            "title": titles_arr[iid],
            "timestamp": timestamp.astype(np.int64),
            "click": click.astype(np.int64),
            "purchase": purchase.astype(np.int64),
            "repurchase": repurchase.astype(np.int64),
            "true_ctr": true_ctr,
            "true_cvr": true_cvr,
            "true_repurchase": true_rep,
            "true_ctcvr": true_ctcvr,
        }
    )
    items = pd.DataFrame(
        {
            "item_id": np.arange(n_items, dtype=np.int64),
            "category": category,
            "category_name": [nouns[c][0] for c in category],
            "price": price,
            "title": titles_arr,
            "quality": quality,
            "popularity": popularity,
        }
    )
    users = pd.DataFrame(
        {
            "user_id": np.arange(n_users, dtype=np.int64),
            "age": age_obs,
            "hist_items": hist,
            "price_sensitivity": sensitivity,
            "bias": user_bias,
            "activity": activity,
        }
    )
    info: dict[str, Any] = {
        "params": {
            "n_users": n_users,
            "n_items": n_items,
            "n_categories": n_categories,
            "n_impressions": n_impressions,
            "seed": seed,
            "hist_len": (h_lo, h_hi),
            "latent_dim": latent_dim,
            "ctr_base": ctr_base,
            "cvr_base": cvr_base,
            "repurchase_base": repurchase_base,
            "interaction": interaction,
            "noise": noise,
            "age_nan_frac": age_nan_frac,
            "targeted_frac": targeted_frac,
        },
        "intercepts": {"ctr": b_ctr, "cvr": b_cvr, "repurchase": b_rep},
        "item_vectors": item_vecs,
        "user_vectors": user_vecs,
        "consumable_categories": np.flatnonzero(consumable).astype(np.int64),
    }
    return FunnelData(impressions=impressions, items=items, users=users, info=info)
