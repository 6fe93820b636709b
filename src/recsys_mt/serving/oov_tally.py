"""Thread-safe running count of the out-of-vocabulary ids a recommender has scored.

A service sees new users and items all the time, and one :class:`~recsys_mt.data.OOVWarning`
per request would flood its log (and ``warnings.catch_warnings`` cannot silence it per request:
it changes process-wide state under concurrent threads). A service's
:class:`~recsys_mt.serving.Recommender` is made with ``oov_warnings=False`` and counts instead;
``GET /health`` reports the shares.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["OOVTally"]


class OOVTally:
    """Per ``Sparse`` feature, the share of scored (user, candidate) pairs whose id was OOV.

    Args:
        features: the names of the schema's ``Sparse`` features.
    """

    def __init__(self, features: list[str]):
        self._features = list(features)
        self._lock = threading.Lock()
        self._pairs = 0
        self._oov = dict.fromkeys(self._features, 0)

    def add(self, frame: Any) -> None:
        """Count one encoded frame of pairs (its ``meta["oov_counts"]``)."""
        counts = frame.meta.get("oov_counts", {})
        with self._lock:
            self._pairs += len(frame)
            for name in self._features:
                self._oov[name] += int(counts.get(name, 0))

    def snapshot(self) -> dict[str, Any]:
        """``{"pairs": n, "share": {feature: OOV share}}`` over every pair counted so far."""
        with self._lock:
            n = self._pairs
            share = {k: (v / n if n else 0.0) for k, v in self._oov.items()}
        return {"pairs": n, "share": share}

    def reset(self) -> None:
        """Start counting afresh (a swapped-in model's probe request is not traffic)."""
        with self._lock:
            self._pairs = 0
            self._oov = dict.fromkeys(self._features, 0)
