"""Data: feature specs, ``Schema``, columnar ``TensorFrame``, batching, synthetic data."""

from .features import OOV_ID, PAD_ID, Dense, Feature, FunnelStats, Sequence, Sparse, Text, Vector
from .frame import TensorFrame
from .frame_layout import EncodedPart, encoded_parts
from .loader import BatchLoader
from .parquet import ParquetSource
from .schema import OOVWarning, Schema, SchemaError

__all__ = [
    "OOV_ID",
    "PAD_ID",
    "BatchLoader",
    "Dense",
    "EncodedPart",
    "Feature",
    "FunnelStats",
    "OOVWarning",
    "ParquetSource",
    "Schema",
    "SchemaError",
    "Sequence",
    "Sparse",
    "TensorFrame",
    "Text",
    "Vector",
    "encoded_parts",
]
