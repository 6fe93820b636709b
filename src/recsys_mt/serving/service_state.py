"""The model an HTTP service answers with, and its hot swap.

:class:`ModelSlot` holds one immutable :class:`ServedModel` (model + :class:`Recommender` +
where and when it was loaded). :meth:`ModelSlot.swap` loads and checks a new model completely
*before* replacing the reference in one assignment, so a request that has already taken the
current :class:`ServedModel` finishes on it, and a model that fails to load or to answer
leaves the old one serving.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from ..model import MultiTaskModel
from .recommender import Recommender
from .service_schema import user_fields, users_frame

__all__ = ["ModelSlot", "ServedModel", "SwapError"]


class SwapError(ValueError):
    """A new model could not be loaded or does not fit the service; the old one still serves."""


@dataclass(frozen=True)
class ServedModel:
    """One loaded model, never mutated after it is built.

    Attributes:
        recommender: the :class:`Recommender` over the service's catalog.
        version: 1 for the first model, +1 at every successful swap.
        directory: the checkpoint directory, or ``None`` for a model passed as an object.
        loaded_at: ISO 8601 UTC time the load finished.
        load_seconds: time spent loading and checking it.
    """

    recommender: Recommender
    version: int
    directory: str | None
    loaded_at: str
    load_seconds: float

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for ``GET /health``."""
        return {
            "version": self.version,
            "directory": self.directory,
            "loaded_at": self.loaded_at,
            "load_seconds": round(self.load_seconds, 3),
            "predict_columns": list(self.recommender.model.predict_columns()),
            "oov": self.recommender.oov.snapshot(),
        }


class ModelSlot:
    """The current :class:`ServedModel` of a service and the lock that serialises swaps.

    Args:
        source: a checkpoint directory (``MultiTaskModel.from_pretrained``, CPU) or a model.
        catalog: one row per item with every item-side column the model reads.
        item_key: the catalog's id column.
        category: the catalog's category column (``None`` for none).
        fusion: fusion handed to :meth:`Recommender.recommend` (``None``: its default).
        reranker: re-ranker handed to :meth:`Recommender.recommend` (``None``: plain top-k).
        batch_size: rows per forward pass.
    """

    def __init__(
        self,
        source: str | os.PathLike | Any,
        catalog: pd.DataFrame,
        *,
        item_key: str = "item_id",
        category: str | None = None,
        fusion: Any = None,
        reranker: Any = None,
        batch_size: int = 16384,
    ):
        self.catalog = catalog
        self.item_key = item_key
        self.category = category
        self.fusion = fusion
        self.reranker = reranker
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._probe: tuple[Any, list] | None = None
        first = self._load(source, version=1)
        self.fields = user_fields(first.recommender.schema, catalog.columns)
        self._current = first

    @property
    def current(self) -> ServedModel:
        """The model new requests are answered with (take it once per request)."""
        return self._current

    def recommend(
        self,
        served: ServedModel,
        users: pd.DataFrame | list[dict],
        candidates: list,
        k: int,
        *,
        as_columns: bool = False,
    ) -> pd.DataFrame | dict[str, Any]:
        """``served.recommender.recommend`` with the service's fusion and re-ranker;
        ``users`` is a DataFrame or a list of validated request rows (dicts). ``as_columns``
        returns the answer as ``{column: array}`` (the columns of the ``recommend`` frame)."""
        if not isinstance(users, pd.DataFrame):
            users = users_frame(self.fields, users)
        rec = served.recommender
        run = rec._ranked_columns if as_columns else rec.recommend
        return run(users, candidates, k=k, fusion=self.fusion, reranker=self.reranker)

    def remember_probe(self, users: pd.DataFrame | list[dict], candidates: list) -> None:
        """Keep one answered request; a new model must answer it before it is swapped in."""
        first = users.head(1) if isinstance(users, pd.DataFrame) else users[:1]
        self._probe = (first, list(candidates[:1]))

    def swap(self, source: str | os.PathLike | Any) -> ServedModel:
        """Load ``source``, check it, then make it the current model.

        The check: the checkpoint loads, the :class:`Recommender` accepts the catalog (and,
        with fast scoring, encodes it), the model needs exactly the current request fields,
        and (once a request has been served) it answers the last request seen with finite
        scores, which also warms up its first forward pass. Requests that already hold the old
        model finish on it; the swap yields the GIL between its phases, so request threads
        keep running while it loads.

        Raises:
            SwapError: naming what failed; the old model keeps serving.
        """
        with self._lock:
            new = self._load(source, version=self._current.version + 1)
            fields = user_fields(new.recommender.schema, self.catalog.columns)
            if fields != self.fields:
                old = {f.name: f for f in self.fields}
                got = {f.name: f for f in fields}
                changed = sorted(n for n in old.keys() & got.keys() if old[n] != got[n])
                raise SwapError(
                    f"model {new.directory or 'object'} needs other request fields than the "
                    f"served one: added {sorted(got.keys() - old.keys())}, removed "
                    f"{sorted(old.keys() - got.keys())}, changed type {changed}; serve it from "
                    "a new service"
                )
            time.sleep(0)  # let waiting request threads run between the swap's phases
            self._check_probe(new)
            new.recommender.oov.reset()  # the counts start at 0 with each served model
            self._current = new
            return new

    def _check_probe(self, new: ServedModel) -> None:
        if self._probe is None:
            return
        users, candidates = self._probe
        try:
            out = self.recommend(new, users, candidates, k=1)
        except Exception as e:  # any failure must leave the old model serving
            raise SwapError(f"model {new.directory or 'object'} fails a served request: {e}") from e
        if len(out) == 0 or not all(math.isfinite(float(s)) for s in out["score"]):
            raise SwapError(f"model {new.directory or 'object'} gives no finite score")

    def _load(self, source: str | os.PathLike | Any, version: int) -> ServedModel:
        start = time.perf_counter()
        directory = None
        try:
            if isinstance(source, (str, os.PathLike)):
                directory = os.fspath(source)
                if not os.path.isdir(directory):
                    raise FileNotFoundError(f"no model directory {directory}")
                model = MultiTaskModel.from_pretrained(directory, map_location="cpu")
            elif isinstance(source, MultiTaskModel):
                model = source
            else:
                raise TypeError(
                    f"a model source is a directory or a MultiTaskModel, not "
                    f"{type(source).__name__}"
                )
            _check_catalog(model.schema, self.item_key)
            time.sleep(0)  # the Recommender encodes the catalog next
            rec = Recommender(
                model,
                self.catalog,
                item_key=self.item_key,
                category=self.category,
                batch_size=self.batch_size,
                oov_warnings=False,  # counted for /health instead of one warning per request
            )
        except Exception as e:  # any failure must leave the old model serving
            raise SwapError(f"cannot serve model {directory or 'object'}: {e}") from e
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return ServedModel(rec, version, directory, stamp, time.perf_counter() - start)


def _check_catalog(schema: Any, item_key: str) -> None:
    """The model reads the catalog's item key."""
    columns = {c for f in schema.features for c in f.input_columns}
    if item_key not in columns:
        raise ValueError(f"the model has no feature reading the catalog's item key {item_key!r}")
