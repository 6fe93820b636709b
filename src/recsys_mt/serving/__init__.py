"""Serving: the ``Recommender`` facade (score candidates → fuse → re-rank → top-k) and the
ONNX export of a model's scoring graph."""

from .export import export_onnx, exported_text_rows
from .recommender import Recommender

__all__ = ["Recommender", "export_onnx", "exported_text_rows"]
