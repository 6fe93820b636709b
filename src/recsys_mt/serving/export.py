"""Export of a model's scoring graph to ONNX, for runtimes without Python.

The exported graph takes the **encoded** feature tensors a fitted :class:`~recsys_mt.Schema`
produces (``sparse`` int64 ``[B, F]``, ``dense`` float32 ``[B, D]``, ``seq/<name>`` int64
``[B, L]``, ``vec/<name>`` float32 ``[B, dim]``, …; the batch size is dynamic) and returns the
calibrated ``conditional`` and ``joint`` probabilities ``[B, T]`` in task order — what
:meth:`MultiTaskModel.predict <recsys_mt.MultiTaskModel.predict>` returns. Turning raw rows into
those tensors is the schema's job: ``schema.json`` is written beside the graph, and
``export.json`` lists the inputs (name, dtype, trailing shape) and the task / column order.

Text towers are not exported yet (their tokenisation and text table would have to be baked
in); exporting such a model raises ``NotImplementedError``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.frame import TensorFrame

__all__ = ["EXPORT_FORMAT", "export_onnx"]

#: Value of the ``"format"`` entry of ``export.json``.
EXPORT_FORMAT = "recsys_mt.onnx/1"
_SKIP = ("labels", "group")


class _Scoring(nn.Module):
    """``forward(*tensors) -> (conditional [B, T], joint [B, T])`` with calibration applied."""

    def __init__(self, model: nn.Module, keys: list[str]):
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, *tensors: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(dict(zip(self.keys, tensors)))
        return self.model.probabilities(self.model.calibrate_logits(logits))


def export_onnx(
    model: Any, directory: str | os.PathLike, example: TensorFrame, opset: int = 17
) -> Path:
    """Write ``model.onnx``, ``schema.json`` and ``export.json`` into ``directory``.

    Args:
        model: a :class:`~recsys_mt.MultiTaskModel` (put in eval mode; stays on its device).
        directory: output folder (created if needed).
        example: a few encoded rows (``schema.transform(df)``) fixing the inputs' names, dtypes
            and trailing shapes; their batch size does not matter (it is dynamic).
        opset: ONNX opset version.

    Returns:
        The path of ``model.onnx``.
    """
    for enc in model.encoders:
        if callable(getattr(enc, "prepare", None)):
            raise NotImplementedError(
                f"{type(enc).__name__} cannot be exported to ONNX yet (its text table and "
                "tokeniser would have to be baked into the graph); export a model without it"
            )
    if not isinstance(example, TensorFrame) or len(example) == 0:
        raise ValueError("example must be a non-empty TensorFrame (schema.transform of a few rows)")
    keys = [k for k in example.keys() if k not in _SKIP]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    model.eval()
    device = model.device
    args = tuple(example[k][: min(len(example), 8)].to(device) for k in keys)
    axes = {k: {0: "batch"} for k in (*keys, "conditional", "joint")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on shape checks that hold for any batch
        torch.onnx.export(
            _Scoring(model, keys).eval(),
            args,
            str(path),
            input_names=keys,
            output_names=["conditional", "joint"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    model.schema.to_json(directory / "schema.json")
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
    }
    (directory / "export.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return path
