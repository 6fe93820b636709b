"""Per-row feature attributions of a task's logit by integrated gradients (Captum).

:func:`explain` (also :meth:`MultiTaskModel.explain <recsys_mt.MultiTaskModel.explain>`) says,
for each row, how much each input feature moved the chosen task's logit away from a
*baseline* input that carries no information::

    attr = model.explain(test_df.head(200), task="cvr")
    attr[["user_id", "item_id", "hist_items", "price", "logit", "delta"]]

Integrated gradients (Sundararajan et al., 2017) integrates the gradient of the output along the
straight line from the baseline ``b`` to the input ``x``: ``attr_i = (x_i − b_i) ·
∫₀¹ ∂f(b + α (x − b)) / ∂x_i dα``. The attributions of a row add up to ``f(x) − f(b)``
(*completeness*) up to the error of the ``n_steps``-point quadrature, which the ``delta``
column reports. Ids are discrete, so the path runs through embedding space (see
:mod:`recsys_mt.model.explain_inputs`). Needs ``pip install recsys-mt[explain]`` (Captum).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..losses import chain_log_probs
from .explain_inputs import (
    BASELINES,
    InputPlan,
    check_encoders,
    describe,
    feature_order,
    owners_in_order,
    reduce_part,
)
from .input_checks import check_inputs

__all__ = ["BASELINES", "TARGETS", "explain"]

TARGETS = ("logit", "probability")
"""What is attributed: the task's log-odds (its raw value for regression), or its probability."""


def _captum_ig() -> type:
    try:
        from captum.attr import IntegratedGradients
    except ImportError as e:
        raise ImportError(
            "explain needs Captum: pip install recsys-mt[explain] (or pip install captum)"
        ) from e
    return IntegratedGradients


def _target_fn(model: nn.Module, task: str, target: str) -> Callable[[Tensor], Tensor]:
    """Map logits ``[B, T]`` to the explained output ``[B]`` of ``task`` (a task name or a
    binary child task's joint name such as ``"ctcvr"``); raise ``ValueError`` if unknown."""
    if target not in TARGETS:
        raise ValueError(f"explain: target must be one of {TARGETS}, got {target!r}")
    tasks = model.schema.tasks
    names = [t.name for t in tasks]
    joints = {t.joint: j for j, t in enumerate(tasks) if t.given is not None and t.binary}
    if not isinstance(task, str) or (task not in names and task not in joints):
        raise ValueError(
            f"explain: unknown task {task!r}; tasks: {names}, joint outputs: {list(joints)}"
        )
    parents = list(model.parents)
    if task in names:
        j = names.index(task)
        if not tasks[j].binary and target == "probability":
            raise ValueError(f"explain: task {task!r} is a regression task; use target='logit'")
        if target == "logit" or not tasks[j].binary:
            return lambda z: z[:, j].float()
        return lambda z: torch.sigmoid(z[:, j].float())
    j = joints[task]

    def joint(z: Tensor) -> Tensor:
        logp = chain_log_probs(z.float(), parents)[:, j]  # log p(all stages up to j)
        if target == "probability":
            return logp.exp()
        return logp - torch.log(-torch.expm1(logp).clamp_max(-1e-30))  # joint log-odds

    return joint


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"explain: {name} must be an int >= {low}, got {value!r}")
    return value


@torch.no_grad()
def _plain_outputs(model: nn.Module, batch: dict[str, Tensor], fn: Callable) -> Tensor:
    return fn(model(batch))


def explain(
    model: nn.Module,
    data: Any,
    task: str = "ctr",
    *,
    target: str = "logit",
    n_steps: int = 64,
    batch_size: int = 64,
    baseline: str = "oov",
    encoders: bool = True,
    progress_bar: bool | None = None,
) -> pd.DataFrame:
    """Integrated-gradients attributions of ``task``'s output for every row of ``data``.

    Args:
        model: a :class:`~recsys_mt.model.MultiTaskModel` whose encoders are
            :class:`~recsys_mt.encoders.IDEmbedding`, :class:`~recsys_mt.encoders.DenseEncoder`,
            :class:`~recsys_mt.encoders.VectorEncoder` or
            :class:`~recsys_mt.encoders.BertTextTower`.
        data: the rows to explain: a DataFrame with the schema's feature columns, or a
            :class:`~recsys_mt.data.TensorFrame` the schema made.
        task: a task name (its *conditional* output: ``"cvr"`` is p(buy | click)) or the joint
            name of a binary child task (``"ctcvr"``: p(click ∧ buy)).
        target: ``"logit"`` (log-odds; a regression task's value) or ``"probability"``.
        n_steps: points of the Gauss-Legendre quadrature of the path integral; more steps
            shrink ``delta``.
        batch_size: rows explained together; one forward pass evaluates
            ``batch_size · n_steps`` points.
        baseline: ``"oov"``: every id (sparse value, history entry, attention target) becomes
            its feature's OOV id, whose row is the trained "unknown value" vector, and histories
            keep their length; ``"padding"``: every sparse id becomes the missing id 0 and every
            history is empty. Dense columns sit at their training means either way (0 for
            standardised columns), vectors at zero (the training mean under
            ``normalize="standard"``; with ``nan="zero"`` the presence flag is 0 too, the
            encoding of a missing vector) and texts (a text tower's text and query) at the
            missing-text vector, its history's mean text vector at zeros. The baseline output
            is the model's output for that input: with ``"padding"`` the same for every row,
            with ``"oov"`` the same for rows whose empty histories are the same ones (an empty
            history stays empty).
        encoders: add the per-encoder totals (``encoder/<Class>`` columns).
        progress_bar: a tqdm bar on stderr; ``None`` shows one for more than 8 batches.

    Returns:
        A DataFrame with one row per input row (the input DataFrame's index, or 0..N-1) and
        float64 columns: one per feature the encoders read, in schema order (each Sparse id,
        each Sequence, each dense column including FunnelStats outputs, each Vector, each
        Text, a text tower's query included; a text tower's history part counts for the
        history Sequence, an attention target for its ``vocab_from`` feature), then with
        ``encoders`` one total per encoder,
        then ``baseline_logit`` (the output at the baseline), ``logit`` (the model's output)
        and ``delta`` = Σ feature attributions − (logit − baseline_logit). With
        ``target="probability"`` the two output columns are ``baseline_probability`` and
        ``probability``. Uncalibrated: :meth:`calibrate`'s map ``a·z + b`` scales logit
        attributions by ``a``.

    Raises:
        ValueError: an unknown task, target or baseline, an empty frame, a frame without a
            feature the model reads.
        TypeError: an encoder explain cannot attribute through.
        ImportError: Captum is not installed.

    Like :meth:`predict`, it puts the model in eval mode and leaves it there (restoring a
    training mode afterwards would switch id dropout on under another thread that is scoring
    with the model); its parameters and their ``.grad`` are not changed. The model's
    IDEmbedding lookups are routed through the explanation in the calling thread only, so
    other threads may score with the model, or explain with it, at the same time.
    """
    fn = _target_fn(model, task, target)
    if baseline not in BASELINES:
        raise ValueError(f"explain: baseline must be one of {BASELINES}, got {baseline!r}")
    _check_int("n_steps", n_steps, 2)
    _check_int("batch_size", batch_size, 1)
    check_encoders(model)
    out_name = "logit" if target == "logit" else "probability"
    outputs = (f"baseline_{out_name}", out_name, "delta")
    names = [f.name for f in model.schema.features] + list(model.schema.dense_columns)
    clash = [n for n in names if n in outputs]
    if clash:
        raise ValueError(f"explain: feature name {clash[0]!r} clashes with an output column")
    index = data.index if isinstance(data, pd.DataFrame) else None
    if isinstance(data, pd.DataFrame) and len(data) == 0:
        raise ValueError("explain: the DataFrame has 0 rows: nothing to explain")
    integrated_gradients = _captum_ig()
    frame = model._as_frame(data)
    if len(frame) == 0:
        raise ValueError("explain: the frame has 0 rows: nothing to explain")
    check_inputs(model, frame, "explain")
    model.eval()  # every module (a mixed train / eval state included): no id dropout
    columns = _run(
        model, frame, fn, baseline, n_steps, batch_size, progress_bar, integrated_gradients
    )
    feats = feature_order(model, [c for c in columns if "/" not in c])  # names have no "/"
    table = {name: columns[name] for name in feats}
    if encoders:
        table.update({c: v for c, v in columns.items() if c.startswith("encoder/")})
    table[f"baseline_{out_name}"] = columns["out/baseline"]
    table[out_name] = columns["out/output"]
    total = np.sum([columns[n] for n in feats], axis=0)
    table["delta"] = total - (columns["out/output"] - columns["out/baseline"])
    return pd.DataFrame(table, index=index)


def _run(
    model: nn.Module,
    frame: Any,
    fn: Callable[[Tensor], Tensor],
    baseline: str,
    n_steps: int,
    batch_size: int,
    progress_bar: bool | None,
    integrated_gradients: type,
) -> dict[str, np.ndarray]:
    """``{feature: [N], "encoder/<Class>": [N], "out/baseline": [N], "out/output": [N]}``."""
    from tqdm import tqdm

    plan = InputPlan(model, baseline, fn)
    enc_names = describe(model)
    device = model.device
    chunks: dict[str, list[np.ndarray]] = {}
    n = len(frame)
    show = progress_bar if progress_bar is not None else n > 8 * batch_size
    bar = tqdm(
        total=n, unit=" rows", desc="explain", file=sys.stderr, disable=not show, dynamic_ncols=True
    )
    with bar, plan.patched():
        for b in frame.batches(batch_size):
            batch = {k: v.to(device) for k, v in b.items()}
            rows = next(iter(batch.values())).shape[0]
            parts = plan.parts(batch)
            extra = tuple(batch[k] for k in plan.keys)
            ig = integrated_gradients(lambda *t, _p=parts: plan.forward(_p, *t))
            attrs = ig.attribute(
                tuple(p.x for p in parts),
                baselines=tuple(p.base for p in parts),
                additional_forward_args=extra,
                n_steps=n_steps,
                method="gausslegendre",
            )
            sums: dict[str, Tensor] = {}
            per_encoder = [torch.zeros(rows, dtype=torch.float64, device=device) for _ in enc_names]
            for part, attr in zip(parts, attrs):
                for name, value in reduce_part(attr.detach(), part).items():
                    sums[name] = sums.get(name, 0) + value
                    per_encoder[part.encoder] = per_encoder[part.encoder] + value
            with torch.no_grad():
                base_out = plan.forward(parts, *(p.base for p in parts), *extra)
            sums["out/baseline"] = base_out.double()
            sums["out/output"] = _plain_outputs(model, batch, fn).double()
            sums.update(dict(zip(enc_names, per_encoder)))
            for name in owners_in_order(parts) + ["out/baseline", "out/output", *enc_names]:
                chunks.setdefault(name, []).append(sums[name].cpu().numpy())
            bar.update(rows)
    return {k: np.concatenate(v) for k, v in chunks.items()}
