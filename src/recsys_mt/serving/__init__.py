"""Serving: the ``Recommender`` facade (score candidates → fuse → re-rank → top-k) and the
ONNX export of a model's scoring graph."""

from .export import export_onnx, exported_text_rows
from .recommender import Recommender
from .service import create_app

__all__ = ["Recommender", "create_app", "export_onnx", "exported_text_rows"]
