"""Data helpers shared by the re-ranker tests (tests/test_rerank*.py): random padded batches,
the list of re-rankers every property is checked on, and the output-prefix check."""

from __future__ import annotations

import torch
from hypothesis import settings
from hypothesis import strategies as st

from recsys_mt.rerank import DPP, MMR, CategoryCoverage

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


def make_batch(seed, b, n, d, pad, dtype=torch.float64, n_cat=4):
    """Random scores/vectors/categories with random padding (some rows fully padded at the end)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, n, generator=g, dtype=dtype)
    vectors = torch.randn(b, n, d, generator=g, dtype=dtype)
    categories = torch.randint(0, n_cat, (b, n), generator=g)
    mask = torch.rand(b, n, generator=g) >= pad
    # trailing padding of random length per row (typical of padded candidate lists)
    lengths = torch.randint(0, n + 1, (b,), generator=g)
    mask &= torch.arange(n).unsqueeze(0) < lengths.unsqueeze(1)
    return scores, vectors, categories, mask


def rerankers():
    return [
        MMR(0.0),
        MMR(0.6),
        MMR(1.0),
        DPP(0.0),
        DPP(0.7),
        DPP(0.95, window=3),
        DPP(1.0),
        CategoryCoverage(0.5),
        CategoryCoverage(1.0, gamma=1.0),
        CategoryCoverage(0.7, mode="calibrated"),
        CategoryCoverage(0.0, mode="calibrated"),
    ]


def check_prefix(out, mask, k):
    b, n = mask.shape
    kk = min(k, n)
    assert out.dtype == torch.long
    assert out.shape == (b, kk)
    for row, m in zip(out.tolist(), mask.tolist()):
        real = [i for i in row if i != -1]
        n_real = len(real)
        assert row[:n_real] == real, "padding (-1) before a real index"
        assert n_real == min(kk, sum(m)), "rows must fill up with valid candidates"
        assert len(set(real)) == n_real, "duplicate selection"
        assert all(m[i] for i in real), "padded candidate selected"


dims = st.tuples(
    st.integers(0, 2**31 - 1),  # seed
    st.integers(1, 4),  # B
    st.integers(1, 12),  # N
    st.integers(0, 15),  # k
    st.integers(1, 6),  # d
    st.sampled_from([0.0, 0.2, 0.5]),  # random padding rate
)
