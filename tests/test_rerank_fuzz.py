"""Property-based fuzzing of the re-rankers and score fusions through the public API.

Every re-ranker must, on every input, either raise a clear ``ValueError`` / ``TypeError`` or
return ``[B, min(k, N)]`` long positions on the input's device in which row ``b`` holds exactly
``min(k, N, n_valid[b])`` distinct valid candidates followed by ``-1`` padding.  Valid inputs
(finite or ``-inf`` scores at unmasked candidates, finite vectors at valid ones) must never raise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_mt.rerank import (
    DPP,
    MMR,
    CategoryCoverage,
    WeightedProduct,
    WeightedSum,
    relevance_order,
)
from recsys_mt.rerank import reference as ref

FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INF = float("inf")
NAN = float("nan")

RERANKERS = [
    MMR(0.0),
    MMR(0.5),
    MMR(1.0),
    MMR(0.3, normalize="softmax"),
    MMR(0.5, normalize=None),
    DPP(0.0),
    DPP(0.7),
    DPP(0.9, window=2),
    DPP(1.0 - 1e-9, normalize=None),
    DPP(1.0),
    CategoryCoverage(0.0),
    CategoryCoverage(0.5),
    CategoryCoverage(1.0, gamma=1.0, normalize=None),
    CategoryCoverage(0.7, mode="calibrated"),
    CategoryCoverage(0.5, mode="calibrated", normalize=None),
    CategoryCoverage(1.0, mode="calibrated", normalize="softmax"),
]
USES_VECTORS = [MMR(0.5), DPP(0.7), DPP(0.0, window=2)]


def extremes(dtype: torch.dtype) -> tuple[float, float, float]:
    """``(huge, tiny, subnormal)`` magnitudes of ``dtype``."""
    info = torch.finfo(dtype)
    return info.max / 3, info.tiny, info.tiny * info.eps


def special_values(dtype: torch.dtype) -> list[float]:
    """Values that break naive arithmetic in ``dtype``: near overflow, tiny, subnormal, ties."""
    huge, tiny, sub = extremes(dtype)
    top = torch.finfo(dtype).max
    return [0.0, -0.0, 1.0, -1.0, 0.5, top, -top, huge, 1e20, -1e20, 1e-30, tiny, sub, 2.0]


@st.composite
def batches(draw, min_b: int = 0, max_b: int = 4, max_n: int = 7) -> dict:
    """Valid re-ranker inputs with extreme values; masked entries may hold NaN / inf."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    b, n = draw(st.integers(min_b, max_b)), draw(st.integers(0, max_n))
    d, k = draw(st.integers(1, 4)), draw(st.integers(0, max_n + 2))
    huge, tiny, sub = extremes(dtype)
    values = st.one_of(
        st.sampled_from([*special_values(dtype), -INF]), st.floats(-1e6, 1e6, width=32)
    )
    scores = torch.tensor(draw(st.lists(values, min_size=b * n, max_size=b * n)), dtype=dtype)
    scores = scores.reshape(b, n)
    mask = None
    if draw(st.booleans()):
        row_kind = st.sampled_from(["random", "none", "all"])
        mask = torch.zeros(b, n, dtype=torch.bool)
        for row in range(b):
            kind = draw(row_kind)
            if kind == "random":
                mask[row] = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
            mask[row] |= kind == "all"
        junk = st.lists(st.sampled_from([NAN, INF, -INF, 1.0]), min_size=b * n, max_size=b * n)
        scores = torch.where(mask, scores, torch.tensor(draw(junk), dtype=dtype).reshape(b, n))
    valid = (scores > -INF) & (True if mask is None else mask)

    entry = st.sampled_from([0.0, 1.0, -1.0, 0.3, -0.7, 1e-3])
    scale = st.sampled_from([1.0, 1.0, 0.0, 1e20, 1e-30, huge, tiny, sub])
    raw = draw(st.lists(entry, min_size=b * n * d, max_size=b * n * d))
    scales = draw(st.lists(scale, min_size=b * n, max_size=b * n))
    vectors = torch.tensor(raw, dtype=dtype).reshape(b, n, d)
    vectors *= torch.tensor(scales, dtype=dtype).reshape(b, n, 1)
    if draw(st.booleans()):  # garbage vectors at invalid candidates must be ignored
        vectors[~valid] = draw(st.sampled_from([NAN, INF, -INF]))

    num_cat = draw(st.integers(1, 4))
    cats = draw(st.lists(st.integers(-1, num_cat - 1), min_size=b * n, max_size=b * n))
    categories = torch.tensor(cats, dtype=torch.long).reshape(b, n)
    pref = None
    pref_kind = draw(st.sampled_from(["none", "softmax", "raw", "sparse_ids"]))
    if pref_kind == "softmax":  # smallest entries underflow to subnormal / zero
        logits = st.sampled_from([0.0, 50.0, 100.0, 110.0, 200.0, 1000.0])
        logit = torch.tensor(draw(st.lists(logits, min_size=b * num_cat, max_size=b * num_cat)))
        pref = torch.softmax(logit.to(dtype).reshape(b, num_cat), dim=1)
    elif pref_kind == "raw":
        entries = st.sampled_from([0.0, 1.0, huge, tiny, sub])
        raw_pref = draw(st.lists(entries, min_size=b * num_cat, max_size=b * num_cat))
        pref = torch.tensor(raw_pref, dtype=dtype).reshape(b, num_cat)
    elif pref_kind == "sparse_ids":  # huge category ids without a preference table
        categories = torch.where(categories >= 0, categories * 10**12, categories)
    return {
        "scores": scores,
        "k": k,
        "mask": mask,
        "valid": valid,
        "item_vectors": vectors,
        "categories": categories,
        "user_category_pref": pref,
    }


def assert_promises(out: torch.Tensor, valid: torch.Tensor, k: int, device: torch.device) -> None:
    """Shape, dtype, device, exact count of distinct valid picks, padding only at the end."""
    b, n = valid.shape
    width = min(k, n)
    assert out.dtype == torch.long and out.device == device
    assert tuple(out.shape) == (b, width)
    for row, ok in zip(out.tolist(), valid.tolist()):
        real = [i for i in row if i != -1]
        assert row == real + [-1] * (width - len(real)), f"padding before a pick: {row}"
        assert len(real) == min(width, sum(ok)), f"short list {row} for {sum(ok)} valid"
        assert len(set(real)) == len(real), f"duplicate pick: {row}"
        assert all(0 <= i < n and ok[i] for i in real), f"invalid candidate picked: {row}"


ARGS = ("scores", "k", "mask", "item_vectors", "categories", "user_category_pref")


def call(rr, batch: dict, **override) -> torch.Tensor:
    """``rr(scores, k, **inputs)`` with the batch's inputs, some replaced by ``override``."""
    kwargs = {key: batch[key] for key in ARGS} | override
    return rr(kwargs.pop("scores"), kwargs.pop("k"), **kwargs)


# -- valid inputs: never raise, always keep the promises --------------------------------------
@FUZZ
@given(batches(), st.sampled_from(RERANKERS))
def test_rerankers_keep_promises_on_extreme_valid_inputs(batch, rr):
    out = call(rr, batch)
    assert_promises(out, batch["valid"], batch["k"], batch["scores"].device)
    kwargs = {key: batch[key] for key in ARGS[2:]}
    idx, slot_valid = rr.select(batch["scores"], batch["k"], **kwargs)
    assert torch.equal(idx, out) and torch.equal(slot_valid, out >= 0)


@FUZZ
@given(batches(min_b=1, max_b=1), st.sampled_from(RERANKERS))
def test_one_dimensional_input_and_catalog_lookup_keep_promises(batch, rr):
    single = {key: None if v is None else v[0] for key, v in batch.items() if key in ARGS[2:]}
    out = call(rr, batch, scores=batch["scores"][0], **single)
    assert out.shape == (min(batch["k"], batch["scores"].shape[1]),)
    assert_promises(out.unsqueeze(0), batch["valid"], batch["k"], batch["scores"].device)
    vectors = batch["item_vectors"][0]
    ids = torch.arange(vectors.shape[0]).flip(0).unsqueeze(0)  # catalog rows in reverse order
    ids = torch.where(batch["valid"], ids, torch.full_like(ids, -5))  # never looked up
    via_ids = call(rr, batch, item_vectors=None, item_ids=ids, catalog=vectors.flip(0))
    assert torch.equal(via_ids, call(rr, batch))


def test_relevance_order_keeps_promises_on_extremes():
    scores = torch.tensor([[3e38, -3e38, -INF, 1e-45, 3e38], [-INF, -INF, -INF, -INF, -INF]])
    out = relevance_order(scores, 9)
    assert out.tolist() == [[0, 4, 3, 1, -1], [-1] * 5]
    assert relevance_order(torch.empty(0, 3), 2).shape == (0, 2)
    assert relevance_order(torch.empty(2, 0), 2).shape == (2, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@settings(max_examples=40, deadline=None, derandomize=True)
@given(batches(), st.sampled_from(RERANKERS))
def test_rerankers_on_cuda_match_cpu_and_stay_on_the_device(batch, rr):
    cuda = {key: v.cuda() if isinstance(v, torch.Tensor) else v for key, v in batch.items()}
    out = call(rr, cuda)
    assert_promises(out.cpu(), batch["valid"], batch["k"], torch.device("cpu"))
    assert out.device == cuda["scores"].device
    if batch["scores"].dtype == torch.float64:  # float32 matmuls may round differently
        assert torch.equal(out.cpu(), call(rr, batch))


# -- invalid content: a ValueError naming row and candidate -----------------------------------
@FUZZ
@given(batches(), st.data())
def test_non_finite_values_at_valid_candidates_raise_naming_the_position(batch, data):
    valid = batch["valid"]
    if not bool(valid.any()):
        return
    positions = torch.nonzero(valid).tolist()
    b, i = data.draw(st.sampled_from(positions))
    bad = data.draw(st.sampled_from([NAN, INF, -INF]))
    if data.draw(st.booleans()) and bad != -INF:
        scores = batch["scores"].clone()
        scores[b, i] = bad
        rr = data.draw(st.sampled_from(RERANKERS))
        with pytest.raises(ValueError, match=rf"scores\[{b}, {i}\]"):
            call(rr, batch, scores=scores)
        return
    vectors = batch["item_vectors"].clone()
    vectors[b, i, data.draw(st.integers(0, vectors.shape[2] - 1))] = bad
    rr = data.draw(st.sampled_from(USES_VECTORS))
    if min(batch["k"], valid.shape[1]) == 0:
        return  # nothing is selected, so the vectors are never read
    with pytest.raises(ValueError, match=rf"item_vectors\[{b}, {i}\]"):
        call(rr, batch, item_vectors=vectors)


# -- arbitrary (possibly bad) arguments: a clear error or the promises ------------------------
BAD_K = [-1, -3, 1.5, 2.0, True, "3", None, np.float32(2.0), torch.tensor([1, 2])]


@st.composite
def mutations(draw, batch: dict) -> dict:
    b, n = batch["scores"].shape
    change = draw(st.sampled_from(["k", "mask", "vectors", "categories", "pref", "ids", "none"]))
    out: dict = {}
    if change == "k":
        out["k"] = draw(st.sampled_from([*BAD_K, np.int64(3), torch.tensor(2)]))
    elif change == "mask":
        out["mask"] = draw(
            st.sampled_from(
                [
                    torch.ones(b, n + 1, dtype=torch.bool),
                    torch.ones(b + 1, n, dtype=torch.bool),
                    torch.ones(b, n),  # float mask
                    torch.ones(b, n, dtype=torch.int64),  # integer 0/1 mask is accepted
                ]
            )
        )
    elif change == "vectors":
        out["item_vectors"] = draw(
            st.sampled_from([torch.ones(b, n + 1, 3), torch.ones(b, n), torch.ones(b + 1, n, 2)])
        )
    elif change == "categories":
        out["categories"] = draw(
            st.sampled_from([torch.zeros(b, n), torch.zeros(b, n + 2, dtype=torch.long)])
        )
    elif change == "pref":
        out["user_category_pref"] = draw(
            st.sampled_from([torch.ones(b + 1, 2), -torch.ones(b, 9), torch.full((b, 9), NAN)])
        )
    elif change == "ids":
        ids = torch.full((b, n), draw(st.sampled_from([-1, 5, 10**6])), dtype=torch.long)
        out.update(item_vectors=None, item_ids=ids, catalog=torch.ones(5, 3))
    return out


@FUZZ
@given(batches(max_b=3, max_n=5), st.sampled_from(RERANKERS), st.data())
def test_any_arguments_give_a_clear_error_or_the_promises(batch, rr, data):
    change = data.draw(mutations(batch))
    try:
        out = call(rr, batch, **change)
    except (ValueError, TypeError) as err:
        assert str(err)  # a message, not a bare exception
        return
    mask = change.get("mask", batch["mask"])
    valid = batch["scores"] > -INF
    if mask is not None:
        valid &= torch.as_tensor(mask).bool()
    assert_promises(out, valid, int(change.get("k", batch["k"])), batch["scores"].device)


@pytest.mark.parametrize(
    "make",
    [
        lambda: MMR(1.5),
        lambda: MMR(float("nan")),
        lambda: MMR("0.5"),
        lambda: MMR(True),
        lambda: DPP(-0.1),
        lambda: DPP(0.5, window=0),
        lambda: DPP(0.5, window=2.5),
        lambda: DPP(0.5, eps=float("inf")),
        lambda: CategoryCoverage(0.5, gamma=0.0),
        lambda: CategoryCoverage(0.5, alpha=2.0),
        lambda: CategoryCoverage(0.5, mode=["xquad"]),
        lambda: MMR(0.5, normalize="zscore"),
    ],
)
def test_bad_constructor_arguments_raise(make):
    with pytest.raises((ValueError, TypeError)):
        make()


# -- empty inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("rr", RERANKERS, ids=repr)
@pytest.mark.parametrize("b, n, k", [(0, 5, 3), (3, 0, 3), (0, 0, 2), (2, 4, 0)])
def test_empty_batches_give_empty_results_of_the_right_shape(rr, b, n, k):
    out = rr(
        torch.rand(b, n),
        k,
        item_vectors=torch.rand(b, n, 3),
        categories=torch.zeros(b, n, dtype=torch.long),
    )
    assert out.shape == (b, min(k, n)) and out.dtype == torch.long


# -- the batched code agrees with the per-user references on ordinary inputs -------------------
@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.integers(1, 9), st.integers(1, 10))
def test_batched_rerankers_agree_with_references_after_the_fixes(seed, b, n, k):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, n, generator=g, dtype=torch.float64) * 1e30  # large, no overflow
    vectors = torch.randn(b, n, 3, generator=g, dtype=torch.float64)
    vectors *= torch.tensor([1e-200, 1.0, 1e200], dtype=torch.float64)[torch.arange(n) % 3, None]
    mask = torch.rand(b, n, generator=g) > 0.2
    cats = torch.randint(-1, 3, (b, n), generator=g)
    pairs = [
        (MMR(0.4), ref.mmr_reference, {"vectors": vectors, "lambda_": 0.4}),
        (DPP(0.6), ref.dpp_reference, {"vectors": vectors, "theta": 0.6}),
        (CategoryCoverage(0.6), ref.xquad_reference, {"categories": cats, "lambda_": 0.6}),
        (
            CategoryCoverage(0.6, "calibrated"),
            ref.calibrated_reference,
            {"categories": cats, "lambda_": 0.6},
        ),
    ]
    for rr, fn, kwargs in pairs:
        out = rr(scores, k, mask=mask, item_vectors=vectors, categories=cats)
        expected = ref.per_user(fn, scores, k, mask=mask, **kwargs)
        assert np.array_equal(out.numpy(), expected), rr


# -- fusion -----------------------------------------------------------------------------------
@FUZZ
@given(
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 3),
    st.integers(0, 4),
    st.lists(st.sampled_from([0.0, 1.0, -1.0, 2.0, 1e30, 0.5]), min_size=2, max_size=2),
    st.data(),
)
def test_fusions_of_finite_scores_are_finite(dtype, b, n, weights, data):
    special = special_values(dtype)
    values = st.one_of(st.sampled_from(special), st.floats(-10, 10, width=32))
    column = st.lists(values, min_size=b * n, max_size=b * n)
    cols = {
        name: torch.tensor(data.draw(column), dtype=dtype).reshape(b, n)
        for name in ("ctr", "price")
    }
    w = dict(zip(("ctr", "price"), weights))
    total = WeightedSum(w)(cols)
    assert total.shape == (b, n) and total.dtype == dtype
    assert bool(torch.isfinite(total).all()), total
    product = WeightedProduct(w)(cols)
    assert product.shape == (b, n) and product.dtype == dtype
    assert bool((torch.isfinite(product) & (product >= 0)).all()), product
