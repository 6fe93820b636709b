"""``Recommender``: score (user, candidate) pairs → fuse objectives → re-rank → top-k."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..data.frame_layout import encode_rows
from ..rerank import PAD, Reranker, gather_selected, relevance_order
from .candidates import (
    as_id_array,
    category_codes,
    first_occurrences,
    float_tensor,
    task_depth,
    user_chunks,
)
from .oov_tally import OOVTally
from .pair_encoding import PairEncoder

FusionFn = Callable[[Any], Any]


class Recommender:
    """Turns a trained :class:`~recsys_mt.model.MultiTaskModel` into ranked lists.

    For every user and each of their candidates the model predicts all objectives (in batches,
    under ``torch.inference_mode``); a fusion combines them into one score ``[B, N]``; a
    re-ranker (or plain top-k) picks ``k`` items per user, batched over users.

    Args:
        model: a trained model (put in eval mode once here; the object is never mutated after,
            so one ``Recommender`` can serve concurrent calls from several threads).
        catalog: one row per item with the item-side feature columns the schema needs
            (``item_id``, ``category``, ``price``, titles, …). Columns of the catalog override
            same-named user columns.
        item_key: the catalog's id column (a :class:`~recsys_mt.data.Sparse` feature).
        category: catalog column with the item category, for category-aware re-rankers and
            the ``category`` output column (``None`` to skip).
        item_vectors: ``[M, d]`` vectors aligned with the catalog rows for similarity-based
            re-rankers; ``"auto"`` takes the model's learned ``item_key`` embeddings; ``None``
            disables them.
        batch_size: rows per model forward pass.
        fast_scoring: encode the catalog once and each call's users once, then gather the rows
            of every (user, candidate) pair from the two (see
            :class:`~recsys_mt.serving.pair_encoding.PairEncoder`; the same probabilities bit for
            bit). ``False``, and models the gathering cannot serve (text features or towers, a
            funnel-statistics entity crossing user and catalog columns), encode a DataFrame of
            all pairs per call.
        oov_warnings: emit an :class:`~recsys_mt.data.OOVWarning` when a call's share of
            unknown ids is high. ``False`` (what the service uses: new users are its daily
            bread) only counts them: ``recommender.oov.snapshot()`` gives each ``Sparse``
            feature's OOV share over every pair scored so far.
    """

    def __init__(
        self,
        model: Any,
        catalog: pd.DataFrame,
        item_key: str = "item_id",
        category: str | None = "category",
        item_vectors: Tensor | np.ndarray | str | None = "auto",
        batch_size: int = 16384,
        fast_scoring: bool = True,
        oov_warnings: bool = True,
    ):
        if not isinstance(catalog, pd.DataFrame) or len(catalog) == 0:
            raise ValueError("catalog must be a non-empty DataFrame (one row per item)")
        if item_key not in catalog.columns:
            raise KeyError(f"catalog has no item_key column {item_key!r}: {list(catalog.columns)}")
        if catalog[item_key].duplicated().any():
            dup = catalog[item_key][catalog[item_key].duplicated()].iloc[0]
            raise ValueError(f"catalog has duplicate {item_key!r} values, e.g. {dup!r}")
        if category is not None and category not in catalog.columns:
            raise KeyError(f"catalog has no category column {category!r}")
        self.model = model.eval()
        self.schema = model.schema
        self.catalog = catalog.reset_index(drop=True)
        self.item_key = item_key
        self.category = category
        self.batch_size = batch_size
        self._pos = pd.Index(self.catalog[item_key])
        self._numeric_ids = pd.api.types.is_integer_dtype(self._pos.dtype)
        self._categories = self.category_index = self._category_values = None
        if category is not None:  # the columns of user_category_pref follow category_index
            coded = category_codes(self.catalog[category])
            self._categories, self.category_index, self._category_values = coded
        self._vectors = self._item_vectors(item_vectors)
        # per-call lookups read these arrays, taken from the catalog once
        self._item_ids = self.catalog[item_key].to_numpy()
        self._numeric = {
            col: float_tensor(self.catalog[col])
            for col in self.catalog.columns
            if pd.api.types.is_numeric_dtype(self.catalog[col]) and col != item_key
        }
        self.oov_warnings = oov_warnings
        self._pairs = (
            PairEncoder(self.model, self.catalog, warn=oov_warnings) if fast_scoring else None
        )
        self.oov = OOVTally([f.name for f in self.schema.sparse])

    def _item_vectors(self, item_vectors) -> Tensor | None:
        if item_vectors is None:
            return None
        if isinstance(item_vectors, str):
            if item_vectors != "auto":
                raise ValueError(
                    f"item_vectors must be 'auto', None or an array, got {item_vectors!r}"
                )
            cat = self.catalog[[self.item_key]].copy()
            enc = next((e for e in self.model.encoders if hasattr(e, "embedding_of")), None)
            if enc is None:
                return None
            frame_ids = self._encode_ids(cat[self.item_key])
            with torch.inference_mode():
                return (
                    enc.embedding_of(self.item_key, frame_ids.to(self.model.device)).float().cpu()
                )
        v = torch.as_tensor(np.asarray(item_vectors), dtype=torch.float32)
        if v.dim() != 2 or v.shape[0] != len(self.catalog):
            raise ValueError(
                f"item_vectors must be [M={len(self.catalog)}, d], got {tuple(v.shape)}"
            )
        return v

    def _encode_ids(self, values: pd.Series) -> Tensor:
        return torch.from_numpy(self.schema.encode_ids(self.item_key, values))

    def _candidate_positions(self, candidates, n_users: int) -> tuple[Tensor, Tensor]:
        """``(positions [B, N] into the catalog, mask [B, N])``."""
        if candidates is None:
            pos = torch.arange(len(self.catalog)).expand(n_users, -1)
            return pos, torch.ones_like(pos, dtype=torch.bool)
        if isinstance(candidates, np.ndarray) and candidates.ndim == 2:
            candidates = list(candidates)  # one row per user
        if isinstance(candidates, (pd.Series, np.ndarray, Sequence)) and len(candidates) == 0:
            raise ValueError("the candidate list is empty: pass item ids, or None for all")
        if isinstance(candidates, (pd.Series, np.ndarray)) or (
            isinstance(candidates, Sequence)
            and candidates
            and not isinstance(candidates[0], (list, tuple, np.ndarray, pd.Series))
        ):
            shared = self._lookup(list(candidates))
            pos = torch.as_tensor(shared).expand(n_users, -1)
            return pos, first_occurrences(pos, torch.ones_like(pos, dtype=torch.bool))
        if len(candidates) != n_users:
            raise ValueError(f"got {len(candidates)} candidate lists for {n_users} users")
        width = max((len(c) for c in candidates), default=0)
        if width == 0:
            raise ValueError("every candidate list is empty")
        lengths = torch.tensor([len(c) for c in candidates])
        mask = torch.arange(width) < lengths[:, None]  # [B, N]
        flat = [item for cand in candidates for item in cand]
        pos = torch.zeros(n_users, width, dtype=torch.long)
        pos[mask] = torch.as_tensor(self._lookup(flat))  # one lookup, row-major order
        return pos, first_occurrences(pos, mask)

    def _lookup(self, items: list) -> np.ndarray:
        values = as_id_array(items) if self._numeric_ids else items
        pos = self._pos.get_indexer(values)
        if (pos < 0).any():
            bad = [items[i] for i in np.flatnonzero(pos < 0)[:5]]
            raise KeyError(f"candidate item(s) {bad} are not in the catalog")
        return pos

    def score(self, users: pd.DataFrame, positions: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Every objective for every valid (user, candidate) pair: ``{name: [B, N]}``
        (conditional and joint probabilities; 0 at padded slots).

        Args:
            users: ``B`` user rows.
            positions: int64 ``[B, N]`` catalog rows of the candidates.
            mask: bool ``[B, N]``, False at padded (or repeated) slots.

        With ``fast_scoring`` the pairs' rows are gathered from the encoded catalog and users;
        otherwise (and whenever gathering cannot serve a call) a DataFrame of all pairs is
        encoded. Both give the same probabilities, bit for bit.
        """
        b, n = positions.shape
        rows_u, rows_c = torch.nonzero(mask, as_tuple=True)
        frame = None
        if self._pairs is not None:
            frame = self._pairs.encode(users, rows_u, positions[rows_u, rows_c])
        if frame is None:
            frame = self._pair_frame(users, positions, rows_u, rows_c)
        self.oov.add(frame)
        pred = self.model.predict_tensors(frame, batch_size=self.batch_size)
        out = {}
        for col, values in pred.items():
            full = torch.zeros(b, n, dtype=torch.float32)
            full[rows_u, rows_c] = values.to(torch.float32)
            out[col] = full
        return out

    def _pair_frame(self, users: pd.DataFrame, positions: Tensor, rows_u: Tensor, rows_c: Tensor):
        """The encoded frame of a DataFrame with one row per pair (user columns repeated per
        candidate, the candidate's catalog row beside them)."""
        user_part = users.iloc[rows_u.numpy()].reset_index(drop=True)
        item_part = self.catalog.iloc[positions[rows_u, rows_c].numpy()].reset_index(drop=True)
        pairs = pd.concat(
            [
                user_part.drop(columns=[c for c in item_part.columns if c in user_part.columns]),
                item_part,
            ],
            axis=1,
        )
        if not self.oov_warnings:
            return encode_rows(self.schema, pairs)  # the same frame, without the warning
        return self.schema.transform(pairs, labels=False)

    def recommend(
        self,
        users: pd.DataFrame,
        candidates: Any = None,
        k: int = 10,
        fusion: FusionFn | str | None = None,
        reranker: Reranker | None = None,
        user_category_pref: Tensor | None = None,
    ) -> pd.DataFrame:
        """Top-``k`` items per user as a tidy DataFrame.

        Args:
            users: one row per user with the user-side feature columns (``user_id``, ``age``,
                ``hist_items``, …).
            candidates: per-user lists of item ids (ragged lists are padded and masked; an item
                listed twice is ranked once), one
                shared list for every user, or ``None`` for the whole catalog.
            k: list length; ``k`` larger than a user's candidates returns all of them.
            fusion: a fusion (``WeightedProduct(ctr=1, cvr=1, price=1)``, a callable of the
                ``{objective: [B, N]}`` dict, …) or the name of one predicted column; default:
                the joint probability of the deepest binary task (e.g. ``ctcvr``). Catalog
                numeric columns (``price``) are available to the fusion as objectives.
            reranker: ``MMR``, ``CategoryCoverage``, ``DPP``, … or ``None`` for plain top-k.
            user_category_pref: ``[B, C]`` category preferences for coverage re-rankers.

        Returns:
            Columns ``user`` (row position in ``users``, or its ``user_id`` when present),
            ``rank`` (1-based), ``item``, ``score`` (fused), each predicted objective, and
            ``category`` when known.
        """
        return pd.DataFrame(
            self._ranked_columns(users, candidates, k, fusion, reranker, user_category_pref)
        )

    def _ranked_columns(
        self,
        users: pd.DataFrame,
        candidates: Any = None,
        k: int = 10,
        fusion: FusionFn | str | None = None,
        reranker: Reranker | None = None,
        user_category_pref: Tensor | None = None,
    ) -> dict[str, np.ndarray]:
        """:meth:`recommend`'s answer as ``{column: numpy array}`` (``pd.DataFrame`` of it is
        the :meth:`recommend` frame), for callers that read the columns without a frame."""
        if not isinstance(users, pd.DataFrame) or len(users) == 0:
            raise ValueError("users must be a non-empty DataFrame, one row per user")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        users = users.reset_index(drop=True)
        positions, mask = self._candidate_positions(candidates, len(users))
        objectives = self.score(users, positions, mask)
        for col, values in self._numeric.items():
            if col not in objectives:
                if values is None:  # raises the column's conversion error, as every call does
                    values = torch.as_tensor(self.catalog[col].to_numpy(np.float32))
                objectives[col] = values[positions]
        scores = self._fuse(objectives, fusion)
        if tuple(scores.shape) != tuple(positions.shape):  # a broadcast would rank wrongly
            raise ValueError(
                f"the fusion returned shape {list(scores.shape)}; one score per candidate, "
                f"{list(positions.shape)} ([users, candidates]), is needed"
            )
        self._check_scores(scores, mask, positions, objectives)
        scores = torch.where(mask, scores, torch.tensor(float("-inf")))
        extra: dict[str, Tensor] = {}
        if self._categories is not None:
            extra["categories"] = self._categories[positions]
        if self._vectors is not None:
            extra["item_vectors"] = self._vectors[positions]
        if user_category_pref is not None:
            extra["user_category_pref"] = torch.as_tensor(user_category_pref)
        with torch.inference_mode():
            if reranker is None:
                chosen = relevance_order(scores, k, mask=mask)
            else:
                chosen = reranker(scores, k, mask=mask, **extra)
        return self._columns(users, positions, chosen, scores, objectives)

    def recommend_stream(
        self,
        users: Any,
        candidates: Any = None,
        k: int = 10,
        chunk_rows: int = 1024,
        **kwargs: Any,
    ) -> Iterator[pd.DataFrame]:
        """:meth:`recommend` for more users than fit in memory at once: yields one result
        DataFrame per chunk of users, so only a chunk's ``[chunk, N]`` scores are held.

        Args:
            users: a DataFrame (cut into chunks of ``chunk_rows`` users), an iterable of user
                DataFrames (e.g. ``pd.read_parquet`` per file, ``pd.read_csv(chunksize=...)``),
                or a Parquet file / directory of user rows (read ``chunk_rows`` rows at a time).
            candidates: ``None`` (the whole catalog) or one list shared by every user; per-user
                lists belong with each chunk: call :meth:`recommend` per chunk instead.
            k: list length, as :meth:`recommend`.
            chunk_rows: users per chunk.
            **kwargs: further :meth:`recommend` arguments (``fusion``, ``reranker``).
        """
        nested = (list, tuple, np.ndarray, pd.Series)
        if isinstance(candidates, Sequence) and candidates and isinstance(candidates[0], nested):
            raise ValueError(
                "recommend_stream takes no per-user candidate lists (they would have to "
                "follow the chunks); call recommend(chunk, lists) per chunk"
            )
        for chunk in user_chunks(users, chunk_rows):
            if len(chunk):
                yield self.recommend(chunk, candidates, k=k, **kwargs)

    def _check_scores(
        self, scores: Tensor, mask: Tensor, positions: Tensor, objectives: dict[str, Tensor]
    ) -> None:
        """``ValueError`` naming the user row, the item and the objectives behind a NaN / +inf
        fused score of a real candidate (e.g. a catalog column with a missing price)."""
        bad = mask & (torch.isnan(scores) | (scores == float("inf")))
        if not bool(bad.any()):
            return
        b, i = (int(x) for x in bad.nonzero()[0])
        item = self.catalog[self.item_key].iloc[int(positions[b, i])]
        item = item.item() if hasattr(item, "item") else item  # numpy scalar -> plain value
        culprits = [
            name
            for name, v in objectives.items()
            if v.dim() == 2 and not bool(torch.isfinite(v[b, i].float()))
        ]
        raise ValueError(
            f"the fused score of item {item!r} for user row {b} is {float(scores[b, i])}; "
            f"non-finite objectives there: {culprits or 'none (the fusion made it)'}. Fill or "
            "drop missing values in those catalog columns, or leave the item out of the "
            "candidates"
        )

    def _fuse(self, objectives: dict[str, Tensor], fusion) -> Tensor:
        if fusion is None:
            binary = [t for t in self.schema.tasks if t.binary]
            deepest = max(binary, key=lambda t: task_depth(self.schema.tasks, t.name))
            fusion = deepest.joint if deepest.given else deepest.name
        if isinstance(fusion, str):
            if fusion not in objectives:
                raise KeyError(f"fusion column {fusion!r} not among {sorted(objectives)}")
            return objectives[fusion].float()
        return torch.as_tensor(fusion(objectives)).float()

    def _columns(self, users, positions, chosen, scores, objectives) -> dict[str, np.ndarray]:
        valid = chosen != PAD
        item_pos = gather_selected(positions, chosen)  # [B, k] catalog rows
        b_idx, slot = torch.nonzero(valid, as_tuple=True)
        cat_rows = item_pos[b_idx, slot].numpy()
        who = users["user_id"].to_numpy()[b_idx.numpy()] if "user_id" in users else b_idx.numpy()
        out = {
            "user": who,
            "rank": slot.numpy() + 1,
            "item": self._item_ids[cat_rows],
            "score": gather_selected(scores, chosen)[b_idx, slot].numpy(),
        }
        for name in self.model.predict_columns():
            out[name] = gather_selected(objectives[name], chosen)[b_idx, slot].numpy()
        if self._category_values is not None:
            out["category"] = self._category_values[cat_rows]
        return out
