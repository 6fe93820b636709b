"""Export of a model's scoring graph to ONNX, for runtimes without Python.

The exported graph takes the **encoded** feature tensors a fitted :class:`~recsys_mt.Schema`
produces (``sparse`` int64 ``[B, F]``, ``dense`` float32 ``[B, D]``, ``seq/<name>`` int64
``[B, L]``, ``vec/<name>`` float32 ``[B, dim]``, …; the batch size is dynamic) and returns the
calibrated ``conditional`` and ``joint`` probabilities ``[B, T]`` in task order — what
:meth:`MultiTaskModel.predict <recsys_mt.MultiTaskModel.predict>` returns. Turning raw rows into
those tensors is the schema's job: ``schema.json`` is written beside the graph, and
``export.json`` lists the inputs (name, dtype, trailing shape) and the task / column order.

A text tower (:class:`~recsys_mt.encoders.text.BertTextTower`) is exported as a constant table
of its text vectors, one per row of its text table, computed at export time: the transformer and
the tokeniser are not in the graph. Its input is the int64 table row ``text_row/<feature>``
``[B]`` that :meth:`~recsys_mt.MultiTaskModel.prepare` adds; ``text_<feature>.json`` beside the
graph lists the texts in row order and the item map, and :func:`exported_text_rows` turns raw
texts into rows with them. A text unknown at export time maps to the missing-text row 0 (or, for
an item-level text, to its item's text): re-export to add texts.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.frame import TensorFrame
from ..model.input_checks import check_inputs

__all__ = ["EXPORT_FORMAT", "export_onnx", "exported_text_rows"]

#: Value of the ``"format"`` entry of ``export.json``.
EXPORT_FORMAT = "recsys_mt.onnx/1"
_SKIP = ("labels", "group")
_SKIP_PREFIXES = ("text/",)  # per-frame text codes; the graph reads table rows (text_row/...)


class _Scoring(nn.Module):
    """``forward(*tensors) -> (conditional [B, T], joint [B, T])`` with calibration applied.

    The model's forward (encoders → fusion → head) with each encoder replaced by its export
    module where it has one (a text tower by its lookup table).
    """

    def __init__(self, model: nn.Module, encoders: list[nn.Module], keys: list[str]):
        super().__init__()
        self.model = model
        self.encoders = nn.ModuleList(encoders)
        self.keys = keys

    def forward(self, *tensors: Tensor) -> tuple[Tensor, Tensor]:
        batch = dict(zip(self.keys, tensors))
        fused = self.model.fusion([enc(batch) for enc in self.encoders])
        logits = self.model.head(fused)
        return self.model.probabilities(self.model.calibrate_logits(logits, batch))


def _export_encoders(model: Any) -> list[nn.Module]:
    """The model's encoders, each replaced by its ``export_module()`` where it has one."""
    out = []
    for enc in model.encoders:
        export_module = getattr(enc, "export_module", None)
        if callable(export_module):
            out.append(export_module())
        elif callable(getattr(enc, "prepare", None)):
            raise NotImplementedError(
                f"{type(enc).__name__} cannot be exported to ONNX (it prepares frames but has "
                "no export_module()); export a model without it"
            )
        else:
            out.append(enc)
    return out


def export_onnx(
    model: Any, directory: str | os.PathLike, example: TensorFrame, opset: int = 17
) -> Path:
    """Write ``model.onnx``, ``schema.json`` and ``export.json`` (and, per text tower,
    ``text_<feature>.json``) into ``directory``.

    Args:
        model: a :class:`~recsys_mt.MultiTaskModel` (put in eval mode; stays on its device).
        directory: output folder (created if needed).
        example: a few encoded rows (``schema.transform(df)``, prepared by the model or not)
            fixing the inputs' names, dtypes and trailing shapes; their batch size does not
            matter (it is dynamic).
        opset: ONNX opset version.

    Returns:
        The path of ``model.onnx``.
    """
    if not isinstance(example, TensorFrame) or len(example) == 0:
        raise ValueError("example must be a non-empty TensorFrame (schema.transform of a few rows)")
    encoders = _export_encoders(model)
    model.eval()
    prepare = getattr(model, "prepare", None)
    if any(enc is not orig for enc, orig in zip(encoders, model.encoders)) and prepare:
        example = prepare(example)
    if getattr(model, "schema", None) is not None and hasattr(model, "encoders"):
        check_inputs(model, example, "export_onnx")  # before any folder is made
    keys = [k for k in example.keys() if k not in _SKIP and not k.startswith(_SKIP_PREFIXES)]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    device = model.device
    args = tuple(example[k][: min(len(example), 8)].to(device) for k in keys)
    axes = {k: {0: "batch"} for k in (*keys, "conditional", "joint")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on shape checks that hold for any batch
        torch.onnx.export(
            _Scoring(model, encoders, keys).eval(),
            args,
            str(path),
            input_names=keys,
            output_names=["conditional", "joint"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    model.schema.to_json(directory / "schema.json")
    text_tables = {
        enc.feature: enc.write(directory)
        for enc in encoders
        if callable(getattr(enc, "write", None))
    }
    spec = {
        "format": EXPORT_FORMAT,
        "inputs": [
            {
                "name": k,
                "dtype": str(example[k].dtype).replace("torch.", ""),
                "shape": ["batch", *example[k].shape[1:]],
            }
            for k in keys
        ],
        "outputs": ["conditional", "joint"],
        "tasks": [t.name for t in model.tasks],
        "predict_columns": model.predict_columns(),
        "text_tables": text_tables,
    }
    (directory / "export.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return path


def exported_text_rows(
    directory: str | os.PathLike, feature: str, texts: list[Any], item_ids: Any = None
) -> np.ndarray:
    """The graph's ``text_row/<feature>`` input (int64 ``[N]``) for raw texts, as exported.

    Reads ``text_<owner>.json`` of the tower that encodes ``feature`` (its text or its query).
    A text unknown at export time, or missing, gets row 0 (the missing-text vector); for an
    item-level text, such a row takes its item's known text from the item map when
    ``item_ids`` (the schema's encoded ids of the key, int ``[N]``) are given.
    """
    spec = json.loads((Path(directory) / "export.json").read_text(encoding="utf-8"))
    for name in spec.get("text_tables", {}).values():
        table = json.loads((Path(directory) / name).read_text(encoding="utf-8"))
        if feature in table["features"]:
            break
    else:
        raise KeyError(f"no exported text table holds feature {feature!r} in {directory}")
    row_of = {t: r for r, t in enumerate(table["texts"])}
    missing = table["missing_row"]
    rows = np.array([row_of.get(t, missing) if isinstance(t, str) else missing for t in texts])
    rows = rows.astype(np.int64)
    if item_ids is not None and feature == table["features"][0] and table["item_rows"]:
        ids = np.asarray(item_ids, dtype=np.int64)
        if ids.shape != rows.shape:
            raise ValueError(f"item_ids has shape {ids.shape}, texts has {rows.shape}")
        item_rows = np.asarray(table["item_rows"], dtype=np.int64)
        fill = (rows == missing) & (ids >= 0) & (ids < len(item_rows))
        rows[fill] = item_rows[ids[fill]]
    return rows
