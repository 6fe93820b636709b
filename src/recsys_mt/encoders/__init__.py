"""Encoders: ids, sequences, dense features, precomputed vectors (and the BERT text tower),
plus fusion."""

from .base import Encoder, Fusion, masked_mean
from .dense import DenseEncoder
from .fusion import ConcatFusion
from .id_embedding import IDEmbedding, TargetAttention
from .text import BertTextTower
from .vector import VectorEncoder

__all__ = [
    "BertTextTower",
    "ConcatFusion",
    "DenseEncoder",
    "Encoder",
    "Fusion",
    "IDEmbedding",
    "TargetAttention",
    "VectorEncoder",
    "masked_mean",
]
