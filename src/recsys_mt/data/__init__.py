"""Data: feature specs, ``Schema``, columnar ``TensorFrame``, batching, synthetic data."""

from .features import OOV_ID, PAD_ID, Dense, Feature, FunnelStats, Sequence, Sparse, Text
from .frame import TensorFrame
from .loader import BatchLoader
from .schema import Schema, SchemaError

__all__ = [
    "OOV_ID",
    "PAD_ID",
    "BatchLoader",
    "Dense",
    "Feature",
    "FunnelStats",
    "Schema",
    "SchemaError",
    "Sequence",
    "Sparse",
    "TensorFrame",
    "Text",
]
