"""Data: feature specs, ``Schema``, columnar ``TensorFrame``, batching, synthetic data."""

from .features import OOV_ID, PAD_ID, Dense, Feature, Sequence, Sparse, Text
from .frame import TensorFrame
from .loader import BatchLoader
from .schema import Schema, SchemaError

__all__ = [
    "OOV_ID",
    "PAD_ID",
    "BatchLoader",
    "Dense",
    "Feature",
    "Schema",
    "SchemaError",
    "Sequence",
    "Sparse",
    "TensorFrame",
    "Text",
]
