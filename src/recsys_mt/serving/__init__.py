"""Serving: the ``Recommender`` facade (score candidates → fuse → re-rank → top-k) and the
ONNX export of a model's scoring graph."""

from .export import export_onnx
from .recommender import Recommender
from .service import create_app

__all__ = ["Recommender", "export_onnx", "create_app"]
