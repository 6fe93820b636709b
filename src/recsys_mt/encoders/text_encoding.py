"""Running the base model of a text tower: trainable parts, tokenising, pooling, and the
batched encoding of many texts at once (frozen mode's cache)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .base import masked_mean
from .text_loading import _layer_list

__all__ = ["encode_sorted", "pooled", "set_trainable", "tokenize"]


def set_trainable(
    model: nn.Module,
    trainable: str,
    top_k: int = 2,
    lora: dict[str, Any] | None = None,
) -> nn.Module:
    """``model`` with only the parameters of mode ``trainable`` requiring grad.

    ``"frozen"``: none; ``"top_k_layers"``: the last ``top_k`` transformer layers; ``"lora"``:
    LoRA adapters injected with ``peft`` (``lora``: ``r``, ``lora_alpha``, ``lora_dropout``,
    ``target_modules``; returns the adapted model); ``"full"``: all. The pooler never trains:
    neither pooling reads its output, so it would get no gradient (and break DDP's
    unused-parameter check).
    """
    for p in model.parameters():
        p.requires_grad_(trainable == "full")
    if trainable == "top_k_layers":
        layers = _layer_list(model)
        if top_k > len(layers):
            raise ValueError(f"top_k={top_k} but the model has {len(layers)} layers")
        for layer in layers[len(layers) - top_k :]:
            for p in layer.parameters():
                p.requires_grad_(True)
    elif trainable == "lora":
        model = _add_lora(model, **(lora or {}))
    pooler = getattr(model, "pooler", None)
    if isinstance(pooler, nn.Module):
        for p in pooler.parameters():
            p.requires_grad_(False)
    return model


def _add_lora(
    model: nn.Module,
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if target_modules is None:
        target_modules = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(
            model.config.model_type, "all-linear"
        )
    config = LoraConfig(
        r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules
    )
    model = inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
    """``(ids int32 [n, max_length], lengths int64 [n])`` of ``n`` texts, truncated at
    ``max_length`` tokens (special tokens included) and right-padded with the pad id."""
    enc = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    pad = tokenizer.pad_token_id or 0
    ids = np.full((len(enc), max_length), pad, dtype=np.int32)
    lengths = np.zeros(len(enc), dtype=np.int64)
    for i, seq in enumerate(enc):
        n = min(len(seq), max_length)
        ids[i, :n] = seq[:n]
        lengths[i] = n
    return torch.from_numpy(ids), torch.from_numpy(lengths)


def pooled(base: nn.Module, ids: Tensor, lengths: Tensor, pooling: str) -> Tensor:
    """Pooled vectors ``[n, hidden]`` of token rows ``ids [n, ≥max(lengths)]``.

    Pads only to the longest row given; ``pooling`` is ``"mean"`` (masked mean of the last
    hidden states) or ``"cls"`` (the first token's). Runs under the caller's grad mode.
    """
    width = int(lengths.max())
    ids = ids[:, :width].long()
    mask = torch.arange(width, device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)
    hidden = base(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    return masked_mean(hidden, mask)


def encode_sorted(
    base: nn.Module,
    ids: Tensor,
    lengths: Tensor,
    pooling: str,
    batch_size: int,
    device: torch.device,
    progress: str | None = None,
) -> Tensor:
    """Vectors float32 ``[n, hidden]`` (on ``device``) of ``n`` token rows, without grad.

    Rows are sorted by length and run in batches of ``batch_size``, so each batch pads little;
    ``progress`` is the description of a tqdm bar (``None``: no bar).
    """
    from tqdm.auto import tqdm

    hidden = int(base.config.hidden_size)
    out = torch.empty(len(ids), hidden, dtype=torch.float32, device=device)
    order = torch.argsort(lengths, descending=True, stable=True)
    bar = tqdm(
        total=len(ids),
        desc=progress,
        unit="text",
        file=sys.stderr,
        disable=progress is None,
        leave=False,
    )
    with torch.no_grad(), bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            vec = pooled(base, ids[idx].to(device), lengths[idx].to(device), pooling)
            out[idx.to(device)] = vec.float()
            bar.update(len(idx))
    return out
