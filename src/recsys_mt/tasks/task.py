"""Task specs and the funnel (``given=``) chain."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

LOSSES = ("bce", "mse")


@dataclass
class Task:
    """One prediction objective.

    Args:
        name: task name; prediction columns and metric names use it (``ctr``, ``ctr_auc``).
        label: label column in the DataFrame (defaults to ``name``).
        given: name of the parent task in a purchase funnel. ``Task("cvr", "purchase",
            given="ctr")`` means the task is only observed where the parent's label is 1;
            the model's output for it is the conditional probability p(cvr | click) and the
            joint probability p(click ∧ purchase) is exposed as :attr:`joint`.
        loss: ``"bce"`` for binary labels in {0, 1}, ``"mse"`` for regression (dwell time, ...).
        weight: static loss weight (used by :class:`~recsys_mt.losses.StaticWeights`): a finite
            real number ``>= 0`` (stored as a float).
        joint_name: name of the joint probability column. Default: ``"ctcvr"`` for
            ``cvr`` given ``ctr`` (the customary name), otherwise ``"<name>_joint"``.
    """

    name: str
    label: str | None = None
    given: str | None = None
    loss: str = "bce"
    weight: float = 1.0
    joint_name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(f"task name must be a non-empty string without '/', got {self.name!r}")
        if self.label is None:
            self.label = self.name
        if self.loss not in LOSSES:
            raise ValueError(
                f"Task({self.name!r}): loss must be one of {LOSSES}, got {self.loss!r}"
            )
        if self.given == self.name:
            raise ValueError(f"Task({self.name!r}) cannot be given itself")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, numbers.Real):  # NumPy bools are not Real
            raise TypeError(
                f"Task({self.name!r}): weight must be a real number, got {type(w).__name__} {w!r}"
            )
        if not math.isfinite(float(w)) or w < 0:
            raise ValueError(f"Task({self.name!r}): weight must be finite and >= 0, got {w!r}")
        self.weight = float(w)

    @property
    def binary(self) -> bool:
        return self.loss == "bce"

    @property
    def joint(self) -> str:
        """Column name of the joint probability (only for binary tasks with a parent)."""
        if self.joint_name:
            return self.joint_name
        if self.name == "cvr" and self.given == "ctr":
            return "ctcvr"
        return f"{self.name}_joint"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(**d)


def order_tasks(tasks: list[Task]) -> list[Task]:
    """Validate a task list and return it with parents before children (stable otherwise).

    Raises ``ValueError`` for duplicate names, a joint-probability column named like a task or
    another joint column (``Task("ctcvr")`` next to ``cvr`` given ``ctr``: both would be the
    ``ctcvr`` prediction column), two tasks with the same label and parent, a ``given=`` naming
    an unknown task, a cycle, or a binary task given a regression task.
    """
    names = [t.name for t in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate task names: {dup}")
    by_name = {t.name: t for t in tasks}
    columns = list(names)
    for t in tasks:
        if t.given is not None and t.binary:
            if t.joint in columns:
                raise ValueError(
                    f"Task({t.name!r}) has the joint-probability column {t.joint!r}, which is "
                    f"already a task or joint column ({columns}); rename a task or pass "
                    "joint_name="
                )
            columns.append(t.joint)
    seen: dict[tuple, str] = {}
    for t in tasks:
        key = (t.label, t.given)
        if key in seen:
            raise ValueError(
                f"Task({t.name!r}) and Task({seen[key]!r}) both predict label {t.label!r}"
                + (f" given {t.given!r}" if t.given else "")
                + "; one task per label and parent"
            )
        seen[key] = t.name
    for t in tasks:
        if t.given is not None and t.given not in by_name:
            raise ValueError(
                f"Task({t.name!r}) is given={t.given!r}, which is not a task (tasks: {names})"
            )
        if t.given is not None and not by_name[t.given].binary:
            raise ValueError(
                f"Task({t.name!r}) is given={t.given!r}, a regression task; a funnel parent must "
                "be binary (loss='bce')"
            )
    for t in tasks:  # cycle check: walk up each chain
        seen = [t.name]
        cur = t
        while cur.given is not None:
            cur = by_name[cur.given]
            if cur.name in seen:
                cycle = " -> ".join(seen + [cur.name])
                raise ValueError(f"the task chain has a cycle: {cycle}")
            seen.append(cur.name)
    ordered: list[Task] = []
    placed: set[str] = set()
    while len(ordered) < len(tasks):
        for t in tasks:
            if t.name not in placed and (t.given is None or t.given in placed):
                ordered.append(t)
                placed.add(t.name)
    return ordered


def ancestors(tasks: list[Task], name: str) -> list[str]:
    """Names of the chain above ``name``, nearest parent first."""
    by_name = {t.name: t for t in tasks}
    out = []
    cur = by_name[name]
    while cur.given is not None:
        out.append(cur.given)
        cur = by_name[cur.given]
    return out
