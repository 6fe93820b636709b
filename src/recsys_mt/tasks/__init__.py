"""Tasks (funnel chains) and multi-task heads."""

from .aitm import AITM
from .heads import PLE, GroupedMLP, Head, MMoE, SharedBottom
from .task import Task, ancestors, order_tasks

__all__ = [
    "AITM",
    "GroupedMLP",
    "Head",
    "MMoE",
    "PLE",
    "SharedBottom",
    "Task",
    "ancestors",
    "order_tasks",
]
