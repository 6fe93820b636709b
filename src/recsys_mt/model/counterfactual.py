"""The model side of the ESCM²-style counterfactual CVR regulariser.

:class:`MultiTaskModel` owns one :class:`CounterfactualRegulariser` when built with
``counterfactual="ips"`` or ``"dr"``. It regularises every binary child task whose chain of
ancestors is binary (``cvr`` given ``ctr``, ``repurchase`` given ``cvr``): the child's
conditional logit is trained with :func:`~recsys_mt.losses.ips_cvr_loss` or
:func:`~recsys_mt.losses.dr_cvr_loss`, with the parent's **joint** probability (detached) as the
propensity of observing the child's label and the parent's joint label as the "click".
"""

from __future__ import annotations

import math
import numbers

from torch import Tensor, nn

from ..losses import COUNTERFACTUALS, chain_log_probs, dr_cvr_loss, ips_cvr_loss
from ..tasks.heads import GroupedMLP

PROPENSITY_CLIP = 0.05
#: ``MultiTaskModel(counterfactual_weight=...)``'s default.
DEFAULT_WEIGHT = 0.1


def _describe(tasks: list) -> str:
    return ", ".join(
        f"{t.name} ({t.loss}, " + (f"given {t.given!r})" if t.given else "root)") for t in tasks
    )


def check_counterfactual(kind: str | None, weight: float) -> float:
    """Validate ``counterfactual`` / ``counterfactual_weight``; return the weight as a float.

    The weight must be a finite number > 0, and left at its default (:data:`DEFAULT_WEIGHT`)
    when ``kind`` is ``None``: it would have no effect.
    """
    if kind is not None and kind not in COUNTERFACTUALS:
        raise ValueError(f"counterfactual must be None or one of {COUNTERFACTUALS}, got {kind!r}")
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise TypeError(f"counterfactual_weight must be a number, got {weight!r}")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"counterfactual_weight must be finite and >= 0, got {weight!r}")
    if weight == 0:
        raise ValueError(
            "counterfactual_weight must be > 0 (0 turns the regulariser off: pass "
            "counterfactual=None instead)"
        )
    if kind is None and weight != DEFAULT_WEIGHT:
        raise ValueError(
            f"counterfactual_weight={weight!r} has no effect with counterfactual=None; pass "
            f"counterfactual='ips' or 'dr' to use it, or leave the weight at {DEFAULT_WEIGHT}"
        )
    return float(weight)


class CounterfactualRegulariser(nn.Module):
    """Per-child-task counterfactual CVR risk, weighted by ``weight``.

    Args:
        kind: ``"ips"`` or ``"dr"``.
        weight: multiplier of the regulariser (``counterfactual_weight``), ``> 0``.
        tasks: the schema's tasks, parents first.
        parents: parent index per task.
        in_dim: size of the fused representation (the DR imputation input).

    For ``"dr"`` the imputation model is one linear layer per regularised task over the fused
    encoder output (a :class:`~recsys_mt.tasks.GroupedMLP`, one GEMM for all of them).
    """

    def __init__(
        self, kind: str, weight: float, tasks: list, parents: list[int | None], in_dim: int
    ):
        super().__init__()
        weight = check_counterfactual(kind, weight)
        if kind is None:
            raise ValueError("CounterfactualRegulariser needs kind 'ips' or 'dr', got None")
        chain_binary: list[bool] = []
        for t, p in enumerate(parents):
            chain_binary.append(tasks[t].binary and (p is None or chain_binary[p]))
        self.children_idx = [t for t, p in enumerate(parents) if p is not None and chain_binary[t]]
        if not self.children_idx:
            raise ValueError(
                f"counterfactual={kind!r} needs a binary child task whose parent chain is binary "
                f"(e.g. Task('cvr', 'purchase', given='ctr')); the schema's tasks: "
                f"{_describe(tasks)}"
            )
        self.kind = kind
        self.weight = weight
        self.parents = list(parents)
        self.names = [tasks[t].name for t in self.children_idx]
        if kind == "dr":
            self.imputation = GroupedMLP(
                len(self.children_idx), in_dim, (1,), last_activation=False
            )

    def forward(self, fused: Tensor, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``{child task: weight · regulariser}`` for every regularised task.

        Args:
            fused: ``[B, D]`` fused encoder output the logits came from.
            logits: ``[B, T]`` head outputs (conditional logits).
            labels: ``[B, T]`` labels.
        """
        logits, labels = logits.float(), labels.float()
        joint_q = chain_log_probs(logits, self.parents).exp().detach()
        joint_y: list[Tensor] = []
        for t, p in enumerate(self.parents):
            joint_y.append(labels[:, t] if p is None else labels[:, t] * joint_y[p])
        imputed = self.imputation(fused).squeeze(-1) if self.kind == "dr" else None  # [C, B]
        out = {}
        for k, (t, name) in enumerate(zip(self.children_idx, self.names)):
            p = self.parents[t]
            args = (joint_q[:, p], joint_y[p], labels[:, t])
            if imputed is None:
                reg = ips_cvr_loss(logits[:, t], *args, clip=PROPENSITY_CLIP)
            else:
                dr, imp = dr_cvr_loss(logits[:, t], imputed[k], *args, clip=PROPENSITY_CLIP)
                reg = dr + imp
            out[name] = self.weight * reg
        return out
