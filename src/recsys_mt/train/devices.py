"""Devices and numeric precision of training.

Precision
---------
``"32"``: float32. ``"bf16-mixed"``: forward under ``torch.autocast(dtype=torch.bfloat16)`` on
CPU or CUDA (parameters and optimiser state stay float32; no loss scaling needed).
``"16-mixed"``: autocast float16 plus :class:`torch.amp.GradScaler`; CUDA only (steps whose
gradients overflow are skipped, and so is the scheduler step). ``"auto"``: ``"bf16-mixed"`` on
CUDA devices that support bf16, else ``"32"``.
"""

from __future__ import annotations

import torch

from ..data.frame import TensorFrame
from . import distributed as dist_utils

__all__ = ["PRECISIONS", "place_frame", "resolve_device", "resolve_precision"]

#: Accepted ``precision`` values (``32`` and ``16`` as ints are read as ``"32"`` / ``"16-mixed"``).
PRECISIONS = ("32", "bf16-mixed", "16-mixed", "auto")
_PRECISION_ALIASES = {"32": "32", "32-true": "32", "16": "16-mixed"}
_DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None, distributed: bool = False) -> torch.device:
    """The device to train on.

    ``"auto"`` / ``None``: CUDA if available, else MPS (single process only), else CPU.
    Strings such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` and :class:`torch.device`
    are accepted. In distributed mode an index-less CUDA device becomes ``cuda:LOCAL_RANK``.
    Raises ``ValueError`` for unknown devices and ``RuntimeError`` for unavailable ones.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            dev = torch.device("cuda")
        elif not distributed and torch.backends.mps.is_available():
            dev = torch.device("mps")
        else:
            dev = torch.device("cpu")
    elif isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            dev = None
        if dev is None or dev.type not in _DEVICE_TYPES:
            raise ValueError(
                f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
            )
    else:
        raise ValueError(f"device must be a string or torch.device, got {type(device).__name__}")
    if dev.type not in _DEVICE_TYPES:
        raise ValueError(f"unsupported device type {dev.type!r}; use cpu, cuda or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(dev)!r} was requested but CUDA is not available")
        if dev.index is None:
            index = dist_utils.env_local_rank() if distributed else torch.cuda.current_device()
            dev = torch.device("cuda", index)
        if dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {str(dev)!r} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible"
            )
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise RuntimeError("device 'mps' was requested but MPS is not available")
        if distributed:
            raise ValueError("distributed training on MPS is not supported; use CPU or CUDA")
    return dev


def resolve_precision(precision: str | int, device: torch.device) -> str:
    """Validate ``precision`` for ``device``; returns ``"32"``, ``"bf16-mixed"`` or
    ``"16-mixed"``."""
    key = str(precision).lower()
    key = _PRECISION_ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if key == "auto":
        return "bf16-mixed" if cuda_bf16 else "32"
    if key == "16-mixed" and device.type != "cuda":
        raise ValueError(
            f"precision '16-mixed' (float16 autocast with gradient scaling) needs a CUDA "
            f"device, not {device.type!r}; use 'bf16-mixed' or '32' on this device"
        )
    if key == "bf16-mixed":
        if device.type not in ("cpu", "cuda"):
            raise ValueError(
                f"precision 'bf16-mixed' is supported on CPU and CUDA, not {device.type!r}; "
                "use '32'"
            )
        if device.type == "cuda" and not cuda_bf16:
            raise ValueError("this CUDA device does not support bfloat16; use '16-mixed' or '32'")
    return key


def frame_nbytes(frame: TensorFrame) -> int:
    return sum(t.numel() * t.element_size() for t in frame.tensors.values())


def free_memory(device: torch.device) -> int | None:
    """Free accelerator memory in bytes, or None if unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "mps":
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    except (AttributeError, RuntimeError):
        return None
    return None


def place_frame(
    frame: TensorFrame, device: torch.device, data_on_device: bool | str
) -> tuple[TensorFrame, torch.device | None]:
    """``(frame, batch_device)``: the frame moved to ``device`` when it should live there (then
    ``batch_device`` is None), else the frame as is and the device to which each batch must be
    copied. ``data_on_device``: ``True``, ``False`` or ``"auto"`` (move when the frame takes
    less than half the free accelerator memory)."""
    if frame.device == device:
        return frame, None
    if device.type == "cpu":
        return frame, device
    move = data_on_device is True
    if data_on_device == "auto":
        free = free_memory(device)
        move = free is not None and frame_nbytes(frame) < 0.5 * free
    if move:
        return frame.to(device), None
    return frame, device
