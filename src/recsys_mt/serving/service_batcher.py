"""Micro-batching of concurrent requests for the HTTP service.

Scoring one small request is mostly fixed per-call work (building frames, encoding, small
matrix products), so :class:`Batcher` lets worker threads take every request waiting in the
queue (up to ``max_batch_users`` users) and answer them with one
:meth:`Recommender.recommend <recsys_mt.Recommender.recommend>` call per
(model, ``k``) group. Requests keep the model they were submitted with, so a hot swap never
moves a request in flight to the new model. A failing batch is retried request by request,
so one bad request cannot fail its neighbours.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Batcher"]

RunFn = Callable[[Any, Any, list, int], Any]


@dataclass
class _Job:
    served: Any
    users: Any
    candidates: list
    k: int
    future: Future = field(default_factory=Future)


class Batcher:
    """Worker threads answering queued requests in batches.

    Args:
        run: ``run(served, users, candidates, k)`` giving a DataFrame in the
            :meth:`Recommender.recommend` format (rows grouped by user, ``rank`` from 1) or
            the same as ``{column: numpy array}`` (each request then gets its rows as such);
            ``users`` is ``B`` user rows (the submitted DataFrames concatenated, or the
            submitted lists of row dicts joined), ``candidates`` ``B`` lists.
        max_batch_users: most users scored in one call (a larger single request still runs
            whole).
        workers: worker threads (each runs one scoring call at a time).
        on_success: called with ``(users, candidates)`` of every answered batch.
    """

    def __init__(
        self,
        run: RunFn,
        max_batch_users: int = 64,
        workers: int = 1,
        on_success: Callable[[Any, list], None] | None = None,
    ):
        for name, value in (("max_batch_users", max_batch_users), ("workers", workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self._run = run
        self.max_batch_users = max_batch_users
        self.workers = workers
        self._on_success = on_success
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._calls = self._users = 0
        self._stats_lock = threading.Lock()

    @property
    def stats(self) -> dict[str, float]:
        """``{"calls", "users", "users_per_call"}``: scoring calls answered so far."""
        with self._stats_lock:
            calls, users = self._calls, self._users
        return {"calls": calls, "users": users, "users_per_call": users / calls if calls else 0.0}

    def submit(self, served: Any, users: Any, candidates: list, k: int) -> Future:
        """Queue one request (``users``: a DataFrame or a list of row dicts, one per
        candidate list); the future resolves to its rows of the answer."""
        self._ensure_started()
        job = _Job(served, users, candidates, k)
        self._queue.put(job)
        return job.future

    def _ensure_started(self) -> None:
        if self._threads:
            return
        with self._start_lock:
            if not self._threads:
                threads = [
                    threading.Thread(target=self._loop, name=f"recsys-mt-score-{i}", daemon=True)
                    for i in range(self.workers)
                ]
                for t in threads:
                    t.start()
                self._threads = threads

    def close(self, timeout: float | None = 10.0) -> None:
        """Let the workers finish the queued requests, then stop them."""
        with self._start_lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        for t in threads:
            t.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch, n, stop = [job], len(job.users), False
            while n < self.max_batch_users:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
                n += len(more.users)
            groups: dict[tuple[int, int], list[_Job]] = {}
            for j in batch:
                if not j.future.set_running_or_notify_cancel():
                    continue  # the caller gave up waiting before scoring started
                groups.setdefault((id(j.served), j.k), []).append(j)
            for jobs in groups.values():
                self._answer(jobs)
            if stop:
                return

    def _answer(self, jobs: list[_Job]) -> None:
        if isinstance(jobs[0].users, pd.DataFrame):
            users: Any = pd.concat([j.users for j in jobs], ignore_index=True)
        else:  # lists of user rows: one frame per batch is built by ``run``
            users = [row for j in jobs for row in j.users]
        candidates = [c for j in jobs for c in j.candidates]
        try:
            out = self._run(jobs[0].served, users, candidates, jobs[0].k)
        except Exception as e:
            if len(jobs) > 1:  # find the request that failed; answer the others
                for j in jobs:
                    self._answer([j])
            else:
                jobs[0].future.set_exception(e)
            return
        # rows come grouped by user in input order, each user's list starting at rank 1
        row = (np.asarray(out["rank"]) == 1).cumsum() - 1
        if len(jobs) > 1 and int(row[-1] if len(row) else -1) != len(users) - 1:
            for j in jobs:  # a user without any row: split by answering one request at a time
                self._answer([j])
            return
        with self._stats_lock:
            self._calls += 1
            self._users += len(users)
        if self._on_success is not None:
            self._on_success(users, candidates)
        start = 0
        for j in jobs:
            stop = start + len(j.users)
            j.future.set_result(_rows(out, (row >= start) & (row < stop)))
            start = stop


def _rows(out: Any, keep: np.ndarray) -> Any:
    """The kept rows of an answer: a DataFrame (index reset) or ``{column: array}``."""
    if isinstance(out, pd.DataFrame):
        return out[keep].reset_index(drop=True)
    return {name: values[keep] for name, values in out.items()}
