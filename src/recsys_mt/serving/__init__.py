"""Serving: the ``Recommender`` facade (score candidates → fuse → re-rank → top-k)."""

from .recommender import Recommender

__all__ = ["Recommender"]
