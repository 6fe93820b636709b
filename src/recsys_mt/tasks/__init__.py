"""Tasks (funnel chains) and multi-task heads."""

from .heads import PLE, GroupedMLP, Head, MMoE, SharedBottom
from .task import Task, ancestors, order_tasks

__all__ = ["GroupedMLP", "Head", "MMoE", "PLE", "SharedBottom", "Task", "ancestors", "order_tasks"]
