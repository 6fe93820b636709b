"""What a text tower outputs from its text vectors, and the lookup that replaces it in an export.

:func:`tower_output` assembles the output of a
:class:`~recsys_mt.encoders.text.BertTextTower` from the text vectors of a batch: the row's text,
the mean text of its history items, the row's query text and the (query, text) relevance
interaction. The tower and :class:`TextLookup` — the tower frozen into a table of vectors, one
per text row, for an exported graph — share it, so both compute the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .base import masked_mean
from .text_table import MISSING_ROW

__all__ = ["TextLookup", "relevance", "tower_output", "unit_vectors"]


def unit_vectors(x: Tensor) -> Tensor:
    """``x [n, h]`` scaled to unit length per row; zero rows stay zero (finite gradient)."""
    return x / (x * x).sum(-1, keepdim=True).clamp_min(1e-24).sqrt()


def relevance(query: Tensor, text: Tensor, units: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """The (query, text) relevance ``[B, 2 + d]`` of text vectors ``query, text [B, d]``.

    Column 0: the cosine of the base model's vectors, from their unit vectors ``units``
    (``(query [B, h], text [B, h])``; 0 when ``None``); column 1: the cosine of ``query`` and
    ``text``; then their elementwise product ``[B, d]``. A zero vector (e.g. an untrained
    missing vector) has cosine 0; the gradient is finite everywhere.
    """
    dot = (query * text).sum(-1, keepdim=True)
    norms = (query * query).sum(-1, keepdim=True) * (text * text).sum(-1, keepdim=True)
    cos = dot / norms.clamp_min(1e-24).sqrt()
    base = (units[0] * units[1]).sum(-1, keepdim=True) if units is not None else cos * 0
    return torch.cat([base, cos, query * text], dim=-1)


def tower_output(
    row_vec: Tensor,
    hist_vec: Tensor | None = None,
    hist_mask: Tensor | None = None,
    query_vec: Tensor | None = None,
    interaction: bool = True,
    units: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The tower's output ``[B, out_dim]`` from its text vectors.

    Args:
        row_vec: the row's text vector ``[B, d]``.
        hist_vec: text vectors of the history items ``[B, L, d]`` (``None``: no history).
        hist_mask: ``[B, L]``, True where a history item has a text.
        query_vec: the row's query vector ``[B, d]`` (``None``: no query).
        interaction: with a query, append :func:`relevance` of query and text.
        units: unit base-model vectors of query and text ``([B, h], [B, h])`` for
            :func:`relevance`.

    Returns:
        ``row_vec``, then the masked history mean, then ``query_vec``, cosine and product.
    """
    parts = [row_vec]
    if hist_vec is not None:
        parts.append(masked_mean(hist_vec, hist_mask))
    if query_vec is not None:
        parts.append(query_vec)
        if interaction:
            parts.append(relevance(query_vec, row_vec, units))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class TextLookup(nn.Module):
    """A text tower as a constant table: ``forward(batch) -> [B, out_dim]`` without the
    transformer, for ONNX export.

    Args:
        vectors: the tower's text vector of every row of its text table ``[R, d]`` (row 0: the
            missing text's vector).
        texts: ``texts[row]`` for the ``R`` rows (row 0 is ``""``).
        feature: the text feature; the input is ``batch["text_row/<feature>"]`` (int64 ``[B]``).
        key: the text's item key (``None`` for a row-level text).
        item_rows: text row of each schema id of ``key`` (int64 ``[vocab]``; 0 = no text).
        history: a ``Sequence`` of ``key`` ids whose mean text vector is appended.
        query: a row-level text feature read from ``batch["text_row/<query>"]``.
        interaction: append the (query, text) relevance (with ``query``).
        units: unit base-model vectors of the rows ``[R, hidden]``, for the relevance.
    """

    def __init__(
        self,
        vectors: Tensor,
        texts: list[str],
        feature: str,
        key: str | None = None,
        item_rows: Tensor | None = None,
        history: str | None = None,
        query: str | None = None,
        interaction: bool = True,
        units: Tensor | None = None,
    ):
        super().__init__()
        if vectors.dim() != 2 or vectors.shape[0] != len(texts):
            raise ValueError(
                f"TextLookup({feature!r}): vectors of shape {tuple(vectors.shape)} do not match "
                f"{len(texts)} texts"
            )
        self.register_buffer("vectors", vectors.detach().clone())
        rows = item_rows if item_rows is not None else torch.zeros(0, dtype=torch.long)
        self.register_buffer("item_rows", rows.detach().clone().long())
        units = units if units is not None else torch.zeros(0, 0)
        self.register_buffer("units", units.detach().clone().to(vectors.dtype))
        self.texts = list(texts)
        self.feature, self.key, self.history = feature, key, history
        self.query, self.interaction = query, bool(interaction)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, out_dim]`` from ``text_row/<feature>`` (and ``text_row/<query>``,
        ``seq/<history>``)."""
        row_vec = self.vectors[batch[f"text_row/{self.feature}"]]
        hist_vec = hist_mask = query_vec = None
        if self.history is not None:
            hist_rows = self.item_rows[batch[f"seq/{self.history}"]]  # [B, L]
            hist_vec, hist_mask = self.vectors[hist_rows], hist_rows != MISSING_ROW
        units = None
        if self.query is not None:
            query_rows = batch[f"text_row/{self.query}"]
            query_vec = self.vectors[query_rows]
            if self.interaction and self.units.numel():
                units = (self.units[query_rows], self.units[batch[f"text_row/{self.feature}"]])
        return tower_output(row_vec, hist_vec, hist_mask, query_vec, self.interaction, units)

    def table(self) -> dict[str, Any]:
        """What a caller needs to turn raw texts (and item ids) into the graph's row inputs."""
        features = [self.feature] + ([self.query] if self.query is not None else [])
        return {
            "features": features,
            "key": self.key,
            "missing_row": MISSING_ROW,
            "texts": self.texts,
            "item_rows": self.item_rows.cpu().tolist(),
        }

    def write(self, directory: str | Path) -> str:
        """Write :meth:`table` to ``text_<feature>.json`` in ``directory``; returns the name."""
        name = f"text_{self.feature}.json"
        text = json.dumps(self.table(), ensure_ascii=False)
        (Path(directory) / name).write_text(text, encoding="utf-8")
        return name
