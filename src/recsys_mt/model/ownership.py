"""One model per component: a head, balancer, fusion or encoder instance is built by the
model it is passed to, so the same instance passed to a second model would be built again —
re-initialising, in place, the weights the first model trained (and, with another number of
tasks, breaking it). :func:`claim_parts` refuses that with an error naming the component.

The owners are kept in a module-level weak mapping (not as an attribute of the component), so
copies, pickles and checkpoints of a model are unaffected, and a component whose model has
been garbage-collected may be used again.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

__all__ = ["claim_parts"]

_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def claim_parts(model: Any, parts: Iterable[Any], record: bool = True) -> None:
    """Check that no ``part`` (``None`` entries are skipped) belongs to another live model,
    then (``record=True``) record ``model`` as the owner of every part. A model checks before
    it builds its parts and records once it is fully built, so a constructor that fails on a
    bad argument leaves its parts free for the corrected call.

    Raises:
        ValueError: a part already belongs to another model; nothing is recorded then.
    """
    parts = [p for p in parts if p is not None]
    for part in parts:
        ref = _OWNERS.get(part)
        owner = ref() if ref is not None else None
        if owner is not None and owner is not model:
            name = type(part).__name__
            raise ValueError(
                f"this {name} instance already belongs to another MultiTaskModel: building it "
                f"again would re-initialise that model's trained weights in place; pass a new "
                f"instance ({name}(...)) or copy.deepcopy(...) of it"
            )
    for part in parts if record else ():
        _OWNERS[part] = weakref.ref(model)
