"""Name registry for config-driven save / load.

Every building block that ``MultiTaskModel.save_pretrained`` writes to ``config.json``
(encoders, fusion, heads, balancers) is stored as ``{"type": <registered name>, **to_config()}``
and rebuilt by :func:`build`. Built-in classes register themselves; a user's own class joins with
the :func:`register` decorator, and must be imported before ``from_pretrained`` is called.
Nothing is imported by name from a checkpoint, so a config file cannot run code.

Example:
    >>> import recsys_mt as rm
    >>> @rm.register("head", "my_head")
    ... class MyHead(rm.Head): ...
"""

from __future__ import annotations

from typing import Any

KINDS = ("encoder", "fusion", "head", "balancer", "reranker")
_REGISTRY: dict[str, dict[str, type]] = {k: {} for k in KINDS}


def register(kind: str, name: str):
    """Class decorator: make ``cls`` buildable from ``{"type": name, ...}`` configs of ``kind``."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")

    def deco(cls: type) -> type:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"{kind} name {name!r} is already registered to {existing.__name__}")
        _REGISTRY[kind][name] = cls
        cls._registry_name = name
        return cls

    return deco


def registered(kind: str) -> dict[str, type]:
    """The classes registered under ``kind`` (a copy)."""
    return dict(_REGISTRY[kind])


def to_config(obj: Any, kind: str) -> dict[str, Any]:
    """``{"type": name, **obj.to_config()}`` for a registered object."""
    name = getattr(type(obj), "_registry_name", None)
    if name is None or _REGISTRY[kind].get(name) is not type(obj):
        raise TypeError(
            f"{type(obj).__name__} is not a registered {kind}; decorate it with "
            f"@recsys_mt.register({kind!r}, 'some_name') and implement to_config() so the model "
            "can be saved"
        )
    if not hasattr(obj, "to_config"):
        raise TypeError(f"{type(obj).__name__} must implement to_config() -> dict to be saved")
    return {"type": name, **obj.to_config()}


def build(kind: str, config: dict[str, Any]) -> Any:
    """Instantiate the registered class named by ``config["type"]`` with the other keys."""
    cfg = dict(config)
    name = cfg.pop("type", None)
    cls = _REGISTRY[kind].get(name)
    if cls is None:
        raise KeyError(
            f"{kind} type {name!r} is not registered (known: {sorted(_REGISTRY[kind])}); "
            "import the module that defines it before loading"
        )
    return cls(**cfg)
