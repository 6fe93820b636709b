"""``create_app``: an optional FastAPI service around :class:`~recsys_mt.Recommender`.

Endpoints: ``POST /recommend`` (top-k per user with the fused score and every predicted
probability), ``GET /health`` and, with an ``admin_token``, ``POST /admin/reload`` (hot swap
to a newly saved model). Needs the ``serve`` extra (``pip install recsys-mt[serve]``);
FastAPI is imported only when an app is built.

(No ``from __future__ import annotations`` here: FastAPI reads the endpoint's request model
from its annotation, a local of :func:`create_app`.)
"""

import asyncio
import functools
import hmac
import os
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pandas as pd

from .candidates import as_id_array
from .service_batcher import Batcher
from .service_schema import item_id_type, request_models
from .service_state import ModelSlot, SwapError

__all__ = ["create_app"]


def _fastapi() -> Any:
    try:
        import fastapi
    except ImportError as e:
        raise ImportError(
            "the HTTP service needs FastAPI and uvicorn: pip install recsys-mt[serve]"
        ) from e
    return fastapi


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _field_path(loc: tuple) -> str:
    """``("body", "users", 0, "features", "age")`` -> ``"users[0].features.age"``."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def create_app(
    model: str | os.PathLike | Any,
    catalog: pd.DataFrame,
    *,
    item_key: str = "item_id",
    category: str | None = "auto",
    fusion: Any = None,
    reranker: Any = None,
    default_k: int = 10,
    max_candidates: int = 1000,
    max_users: int = 64,
    max_batch_users: int = 256,
    workers: int = 1,
    torch_threads: int | None = None,
    admin_token: str | None = None,
    timeout_s: float = 30.0,
) -> Any:
    """Build the FastAPI app serving ``model`` over ``catalog``.

    Args:
        model: a checkpoint directory (loaded with ``MultiTaskModel.from_pretrained`` on the
            CPU) or a trained :class:`~recsys_mt.MultiTaskModel`.
        catalog: one row per item with the item-side columns the model reads; every other
            input column of the model's schema is a request field under ``features``.
        item_key: the catalog's id column; candidate ids in requests are its values.
        category: the catalog's category column (returned with each item, used by
            category-aware re-rankers); ``"auto"`` takes ``"category"`` when present.
        fusion: fusion for :meth:`Recommender.recommend` (``None``: the deepest joint
            probability, e.g. ``ctcvr``).
        reranker: re-ranker for :meth:`Recommender.recommend` (``None``: plain top-k).
        default_k: list length when a request gives no ``k``.
        max_candidates: most candidates per user (more is a 422).
        max_users: most users per request (more is a 422).
        max_batch_users: most users scored in one call when concurrent requests are batched.
        workers: scoring threads (one is right for a few cores: a call uses every torch
            thread).
        torch_threads: ``torch.set_num_threads`` for the process (``None`` leaves it).
        admin_token: enables ``POST /admin/reload``, which needs the header
            ``Authorization: Bearer <admin_token>``; ``None`` leaves the endpoint out (the
            hot swap stays available in Python as ``app.state.models.swap(path)``).
        timeout_s: seconds a request waits for its answer before a 503.

    Returns:
        A ``fastapi.FastAPI`` app; ``app.state.models`` is its
        :class:`~recsys_mt.serving.service_state.ModelSlot`.
    """
    fastapi = _fastapi()
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    for name, value in (
        ("default_k", default_k),
        ("max_candidates", max_candidates),
        ("max_users", max_users),
        ("max_batch_users", max_batch_users),
        ("workers", workers),
    ):
        _positive_int(name, value)
    if torch_threads is not None:
        _positive_int("torch_threads", torch_threads)
    ok = isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool)
    if not ok or not 0 < timeout_s < float("inf"):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if reranker is not None and not callable(reranker):
        raise TypeError(
            f"reranker must be a Reranker (rm.MMR(...), rm.DPP(...), ...) or None, got "
            f"{type(reranker).__name__} {reranker!r}"
        )
    if fusion is not None and not (isinstance(fusion, str) or callable(fusion)):
        raise TypeError(f"fusion must be a column name, a fusion or None, got {fusion!r}")
    if not isinstance(catalog, pd.DataFrame) or len(catalog) == 0:
        raise ValueError("catalog must be a non-empty DataFrame (one row per item)")
    if item_key not in catalog.columns:
        raise KeyError(f"catalog has no item_key column {item_key!r}: {list(catalog.columns)}")
    if category == "auto":
        category = "category" if "category" in catalog.columns else None
    id_type = item_id_type(catalog, item_key)
    slot = ModelSlot(
        model, catalog, item_key=item_key, category=category, fusion=fusion, reranker=reranker
    )
    if isinstance(fusion, str):  # a name must be a scored or numeric catalog column
        rec = slot.current.recommender
        names = set(rec.model.predict_columns()) | set(rec._numeric)
        if fusion not in names:
            raise KeyError(f"fusion column {fusion!r} is not among {sorted(names)}")
    batcher = Batcher(
        functools.partial(slot.recommend, as_columns=True),  # answers read as columns
        max_batch_users=max_batch_users,
        workers=workers,
        on_success=slot.remember_probe,
    )
    if torch_threads is not None:  # process-wide: only once every argument checked out
        import torch

        torch.set_num_threads(torch_threads)
    fields = slot.fields
    _, request_model = request_models(fields, id_type, max_users, max_candidates)
    known = pd.Index(catalog[item_key])

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = fastapi.FastAPI(title="recsys_mt", lifespan=lifespan)
    app.state.models = slot
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        problems = [
            {
                "field": _field_path(tuple(e.get("loc", ()))),
                "msg": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        text = "; ".join(f"{p['field']}: {p['msg']}" for p in problems)
        return JSONResponse({"error": text, "detail": problems}, status_code=422)

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "model": slot.current.describe(),
            "catalog_items": len(catalog),
            "request_fields": [f.name for f in fields],
            "scoring": {**batcher.stats, "workers": workers},
            "limits": {
                "max_users": max_users,
                "max_candidates": max_candidates,
                "default_k": default_k,
            },
        }

    @app.post("/recommend")
    async def recommend(body: request_model):  # type: ignore[valid-type]
        # light checks here on the event loop; scoring runs on the batcher's threads
        served = slot.current  # this request finishes on this model, whatever swaps happen
        k = body.k or default_k
        candidates = [u.candidates for u in body.users]
        flat = [c for cand in candidates for c in cand]
        missing = known.get_indexer(as_id_array(flat)) < 0  # one lookup for every user's list
        if missing.any():
            ends = np.cumsum([len(cand) for cand in candidates])
            i = int(np.searchsorted(ends, np.flatnonzero(missing)[0], side="right"))
            cand = candidates[i]
            bad = [c for c in cand if known.get_indexer([c])[0] < 0][:5]
            msg = f"users[{i}].candidates: item id(s) {bad} are not in the catalog"
            return JSONResponse({"error": msg}, status_code=422)
        rows = [u.features.model_dump() for u in body.users]
        future = batcher.submit(served, rows, candidates, k)  # one frame per batch
        try:
            out = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except asyncio.TimeoutError:
            return JSONResponse({"error": f"no answer within {timeout_s} s"}, status_code=503)
        except (ValueError, KeyError, TypeError, OverflowError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            return JSONResponse({"error": f"the request cannot be scored: {msg}"}, 400)
        return JSONResponse(_answer(out, rows, served))

    if admin_token is not None:
        expected = f"Bearer {admin_token}".encode()

        @app.post("/admin/reload")
        def reload(body: dict, authorization: str = fastapi.Header(default="")):
            if not hmac.compare_digest(authorization.encode(), expected):
                return JSONResponse({"error": "a valid admin token is needed"}, 401)
            path = body.get("model_dir")
            if not isinstance(path, str) or not path:
                return JSONResponse({"error": "model_dir: a model directory is needed"}, 422)
            try:
                new = slot.swap(path)
            except SwapError as e:
                return JSONResponse(
                    {"error": str(e), "model": slot.current.describe()}, status_code=400
                )
            return {"status": "swapped", "model": new.describe()}

    return app


def _answer(out: pd.DataFrame | dict[str, np.ndarray], rows: list[dict], served: Any) -> dict:
    """JSON body: per user (request order) the ranked items with score and probabilities;
    ``out`` is the :meth:`Recommender.recommend` frame or its ``{column: array}`` form."""
    columns = list(served.recommender.model.predict_columns())
    cols = {c: _plain(out[c]) for c in out if c != "user"}
    has_category = "category" in cols
    results: list[dict] = []
    for i in range(len(cols["rank"])):
        if cols["rank"][i] == 1:
            b = len(results)
            results.append({"user": rows[b].get("user_id", b), "items": []})
        item = {
            "item": cols["item"][i],
            "rank": cols["rank"][i],
            "score": cols["score"][i],
            "probabilities": {c: cols[c][i] for c in columns},
        }
        if has_category:
            item["category"] = _json_scalar(cols["category"][i])
        results[-1]["items"].append(item)
    return {"model_version": served.version, "results": results}


def _json_scalar(value: Any) -> Any:
    """A missing value (NaN, ``None``, ``pd.NA``, ``NaT``) as ``None`` (JSON ``null``): NaN is
    not valid JSON, and a catalog may lack an item's category."""
    return None if pd.api.types.is_scalar(value) and pd.isna(value) else value


def _plain(values: pd.Series | np.ndarray) -> list:
    """A column's values as Python objects, as the answer frame's column gives them (object
    arrays go through the same pandas inference, e.g. str with NaN for missing)."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values.tolist()
    return pd.Series(values).tolist() if isinstance(values, np.ndarray) else values.tolist()
