"""Continuous inputs of integrated gradients for a :class:`~recsys_mt.encoders.BertTextTower`.

The tower is attributed after its base model, which then runs once per row rather than once per
integration step. Its output (:func:`~recsys_mt.encoders.text_output.tower_output`) is built from
up to five vectors per row, and each is one input of the explanation, owned by one feature:

========================  ==================  ==========================================
input                     owner               baseline
========================  ==================  ==========================================
``text/row``              the text feature    the missing-text vector
``text/history``          the history         zeros: a history without texts
``text/query``            the query feature   the missing-text vector (a missing query)
``text/row_unit``         the text feature    zeros: the missing text's unit vector
``text/query_unit``       the query feature   zeros: the missing query's unit vector
========================  ==================  ==========================================

``text/history`` is the masked mean text vector of the history items (the tower's history
profile); the two unit vectors (base-model vectors scaled to unit length) exist with a query and
``query_interaction``, for the relevance's first column. :func:`text_output` rebuilds the
tower's output from these inputs with the tower's own :func:`tower_output`, so the query
vector, the history profile and the (query, text) relevance columns follow the vectors they are
computed from: the relevance is shared between the text and the query by its gradient. At the
baseline the output is exactly the tower's output for a row with no text, no query and no
history text.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..encoders.base import masked_mean
from ..encoders.text_output import tower_output
from ..encoders.text_table import MISSING_ROW
from .explain_inputs import InputPart

__all__ = ["text_output", "text_parts", "text_vectors"]


@torch.no_grad()
def text_vectors(enc: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The vectors ``enc`` builds its output from for ``batch``, keyed as the inputs above.

    Reads the rows with the tower's own ``lookup_rows`` (as its ``forward`` does), so
    ``text_output(enc, text_vectors(enc, batch))`` equals ``enc(batch)``.
    """
    vec, unit, (row, query, hist), hist_rows = enc.lookup_rows(batch)
    out = {"text/row": vec.index_select(0, row).float()}
    if query is not None:
        out["text/query"] = vec.index_select(0, query).float()
        if unit is not None:
            out["text/row_unit"] = unit.index_select(0, row).float()
            out["text/query_unit"] = unit.index_select(0, query).float()
    if hist is not None:
        hist_vec = vec.index_select(0, hist).view(*hist_rows.shape, -1)  # [B, L, d]
        out["text/history"] = masked_mean(hist_vec, hist_rows != MISSING_ROW).float()
    return out


def text_parts(i: int, enc: nn.Module, batch: dict[str, Tensor]) -> list[InputPart]:
    """The tower's inputs (see the module docstring), each ``[B, width]`` with its baseline
    and one owner per column; ``i`` indexes the tower in ``model.encoders``."""
    values = text_vectors(enc, batch)
    missing = enc.missing.detach().float()
    owners = {
        "text/row": enc.feature,
        "text/history": enc.history,
        "text/query": enc.query,
        "text/row_unit": enc.feature,
        "text/query_unit": enc.query,
    }
    out = []
    for key, owner in owners.items():  # a fixed order: the row text first
        x = values.get(key)
        if x is None:
            continue
        if key in ("text/row", "text/query"):
            base = missing.to(x.device).expand_as(x).clone()
        else:
            base = torch.zeros_like(x)
        out.append(InputPart(key, i, x, base, [owner] * x.shape[1]))
    return out


def text_output(enc: nn.Module, given: dict[str, Tensor]) -> Tensor:
    """The tower's output ``[N, out_dim]`` from its inputs ``given`` (keyed as
    :func:`text_parts` names them, any number of rows ``N``)."""
    row = given["text/row"]
    hist = given.get("text/history")
    hist_vec = hist_mask = None
    if hist is not None:  # a one-item history whose mean is the profile itself
        hist_vec = hist.unsqueeze(1)
        hist_mask = torch.ones(hist.shape[0], 1, dtype=torch.bool, device=hist.device)
    units = None
    if "text/row_unit" in given:
        units = (given["text/query_unit"], given["text/row_unit"])
    return tower_output(
        row, hist_vec, hist_mask, given.get("text/query"), enc.query_interaction, units
    )
