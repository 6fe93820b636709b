"""Item titles of the synthetic funnel (:mod:`recsys_mt.data.synthetic`): per-category nouns,
quality and filler words, brand names, and the title sampler.

Titles are ``"<brand> <words> <noun>"``; the quality adjectives are drawn with probabilities that
rise (high-quality words) or fall (low-quality words) with the item's latent quality, so text is
informative about quality without being a perfect predictor. Only numpy is used.
"""

from __future__ import annotations

import numpy as np

from .synthetic_sampling import _sigmoid

__all__ = ["CATEGORY_NOUNS", "HIGH_QUALITY_WORDS", "LOW_QUALITY_WORDS"]

CATEGORY_NOUNS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("coffee", "espresso"), True),
    (("headphones", "earbuds"), False),
    (("shampoo", "conditioner"), True),
    (("sneakers", "trainers"), False),
    (("backpack", "rucksack"), False),
    (("vitamins", "supplements"), True),
    (("lamp", "lantern"), False),
    (("jacket", "coat"), False),
    (("tea", "infusion"), True),
    (("blender", "mixer"), False),
    (("notebook", "journal"), False),
    (("detergent", "cleaner"), True),
    (("watch", "smartwatch"), False),
    (("mug", "cup"), False),
    (("toothpaste", "mouthwash"), True),
    (("sunglasses", "shades"), False),
    (("charger", "adapter"), False),
    (("kibble", "petfood"), True),
    (("pillow", "cushion"), False),
    (("keyboard", "keypad"), False),
    (("snacks", "chips"), True),
    (("tent", "shelter"), False),
    (("wallet", "purse"), False),
    (("razor", "blades"), True),
    (("speaker", "soundbar"), False),
    (("pasta", "noodles"), True),
    (("drone", "quadcopter"), False),
    (("lotion", "moisturizer"), True),
    (("tablet", "ereader"), False),
    (("candles", "incense"), True),
)
_CATEGORY_PREFIXES = ("kids", "travel", "outdoor", "office", "garden", "sport", "home", "party")

HIGH_QUALITY_WORDS: tuple[str, ...] = (
    "premium",
    "durable",
    "organic",
    "luxury",
    "handcrafted",
    "professional",
    "deluxe",
    "artisan",
)
LOW_QUALITY_WORDS: tuple[str, ...] = ("basic", "budget", "cheap", "economy", "generic", "discount")
_FILLER_WORDS: tuple[str, ...] = (
    "classic",
    "modern",
    "compact",
    "lightweight",
    "everyday",
    "portable",
    "vintage",
    "slim",
    "large",
    "mini",
    "red",
    "blue",
    "black",
    "white",
    "green",
    "grey",
    "cotton",
    "steel",
    "wooden",
    "bamboo",
    "ceramic",
    "leather",
    "wireless",
    "eco",
    "original",
    "family",
    "travel-size",
    "twin",
)
_BRAND_SYLLABLES: tuple[str, ...] = (
    "ka",
    "lo",
    "mi",
    "ze",
    "tor",
    "van",
    "ri",
    "no",
    "su",
    "bel",
    "dax",
    "fen",
    "gra",
    "hu",
    "jo",
    "kel",
    "mar",
    "nix",
    "ora",
    "pix",
    "qua",
    "ros",
    "syl",
    "tek",
    "ul",
    "vo",
    "wex",
    "yan",
    "zu",
    "bri",
)


def _category_names(n_categories: int) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Noun synonyms and consumable flags for each category."""
    nouns: list[tuple[str, ...]] = []
    consumable = np.zeros(n_categories, dtype=bool)
    n_base = len(CATEGORY_NOUNS)
    for c in range(n_categories):
        words, cons = CATEGORY_NOUNS[c % n_base]
        rnd = c // n_base
        if rnd == 0:
            syn = words
        elif rnd <= len(_CATEGORY_PREFIXES):
            syn = tuple(f"{_CATEGORY_PREFIXES[rnd - 1]} {w}" for w in words)
        else:
            syn = tuple(f"{w}{rnd}" for w in words)
        nouns.append(syn)
        consumable[c] = cons
    return nouns, consumable


def _make_titles(
    rng: np.random.Generator,
    category: np.ndarray,
    quality: np.ndarray,
    nouns: list[tuple[str, ...]],
) -> list[str]:
    n = len(category)
    n_brands = max(20, n // 8)
    syl = np.asarray(_BRAND_SYLLABLES)
    n_syl = rng.integers(2, 4, size=n_brands)
    parts = rng.integers(0, len(syl), size=(n_brands, 3))
    brands = ["".join(syl[parts[b, : n_syl[b]]]).capitalize() for b in range(n_brands)]
    item_brand = rng.integers(0, n_brands, size=n)
    p_high = np.stack([_sigmoid(1.5 * quality - 1.0), _sigmoid(1.5 * quality - 2.5)], axis=1)
    p_low = np.stack([_sigmoid(-1.5 * quality - 1.0), _sigmoid(-1.5 * quality - 2.5)], axis=1)

    def pick(m: int, pool: tuple[str, ...]) -> list[list[str]]:
        """Two distinct words of ``pool`` per row, in random order."""
        idx = np.argsort(rng.random((m, len(pool))), axis=1)[:, :2]
        return [[pool[a], pool[b]] for a, b in idx.tolist()]

    def draw(idx: np.ndarray) -> list[str]:
        m = len(idx)
        k_high = (rng.random((m, 2)) < p_high[idx]).sum(axis=1).tolist()
        k_low = (rng.random((m, 2)) < p_low[idx]).sum(axis=1).tolist()
        k_fill = rng.integers(1, 3, size=m).tolist()
        high = pick(m, HIGH_QUALITY_WORDS)
        low = pick(m, LOW_QUALITY_WORDS)
        fill = pick(m, _FILLER_WORDS)
        order = rng.random((m, 6)).tolist()
        syn_u = rng.random(m).tolist()
        out = []
        for r, i in enumerate(idx.tolist()):
            words = high[r][: k_high[r]] + low[r][: k_low[r]] + fill[r][: k_fill[r]]
            keys = order[r]
            words = [w for _, w in sorted(zip(keys, words))]
            syn = nouns[category[i]]
            noun = syn[int(syn_u[r] * len(syn))]
            out.append(" ".join([brands[item_brand[i]], *words, noun]))
        return out

    titles = draw(np.arange(n))
    # re-draw repeated titles a few times (the first occurrence keeps its title)
    for _ in range(10):
        seen: set[str] = set()
        dup = []
        for i, t in enumerate(titles):
            if t in seen:
                dup.append(i)
            seen.add(t)
        if not dup:
            break
        dup_idx = np.asarray(dup, dtype=np.int64)
        for i, t in zip(dup, draw(dup_idx)):
            titles[i] = t
    return titles
