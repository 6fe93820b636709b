"""``BertTextTower``: a BERT-family text encoder that costs once per distinct text.

The tower turns one :class:`~recsys_mt.data.Text` feature into a vector per row, ``[B, d]``,
using any Hugging Face encoder (BERT, MiniLM, RoBERTa, DistilBERT, …) loaded *offline* from a
local folder. It composes with the other encoders in one
:class:`~recsys_mt.model.MultiTaskModel`::

    tower = rm.BertTextTower("path/to/all-MiniLM-L6-v2", feature="title", projection_dim=64)
    model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), tower])
    train = model.prepare(train)            # tokenise (and, frozen, encode) each text once
    rm.Trainer(max_epochs=3).fit(model, train, model.prepare(val))

How the cost stays "once per distinct text"
-------------------------------------------
The tower keeps a global **text table** (string → row; row 0 is the missing text).
:meth:`BertTextTower.prepare` maps a frame's per-frame text indices (``frame["text/<f>"]``) to
table rows, adds them as ``frame["text_row/<f>"]`` (int64 ``[N]``), and handles every text it
has not seen before:

- ``trainable="frozen"``: the new texts are tokenised and encoded once (sorted by length, in
  batches of ``batch_size``, with a tqdm bar) into ``cache`` (float32 ``[rows, hidden]``, a
  buffer that follows the model's device). Training and prediction read vectors by index; the
  base model never runs in ``forward``.
- trainable modes (``"top_k_layers"``, ``"lora"``, ``"full"``): the new texts are tokenised once
  into ``token_ids`` (int32 ``[rows, max_length]``) / ``token_lengths``; each ``forward`` runs
  the base model only on the *distinct* rows of the batch (``torch.unique``) and scatters the
  vectors back, so a title shared by 100 rows of a batch is encoded once per step.

Missing text
------------
NaN / None (``""`` after ``Schema.transform``) and whitespace-only strings are *missing*. They map
to row 0, are never tokenised, and get a **learned "missing text" vector** (initialised to zeros,
trained at the normal learning rate) instead of an encoding of ``""``. With a ``key`` feature a
row whose text is missing but whose item has a known text (see below) uses the item's text.

Item texts and histories
------------------------
For ``Text(name, key="item_id")`` the tower learns ``item_id → text row`` (``item_rows``, int64
``[vocab]``, 0 = unknown) from every frame it prepares (the last row wins when an item's text
changes) and from :meth:`BertTextTower.add_item_texts` (a catalog). With
``history="hist_items"`` (a ``Sequence`` with ``vocab_from`` = the key) the tower also outputs the
masked mean of the text vectors of the history items, so a user whose history items are rare
(little id signal) but have text still gets a profile. Limits: the map is keyed by the
schema's ids, so items unseen when the schema was fit (OOV id 1) and ids of a hashed key (shared
buckets: the last text wins) cannot carry their own text; history items without a known text
are masked out of the mean (a history with none gives zeros).

Save / load
-----------
``to_config()`` holds the base model path and every setting. ``save_pretrained`` stores the
trainable weights (projection, missing vector, LoRA adapters / unfrozen layers / the whole base
for ``"full"``) in ``model.safetensors``; frozen base weights are left out
(:meth:`checkpoint_exclude`). :meth:`save_extra` writes ``text_tower_<feature>.json`` (the text
table) and ``text_tower_<feature>.safetensors`` (the frozen cache as float32 and the item map).
A frozen model loads and predicts bit-identically **without the base model files** as long as
every text it is asked about is in the cache; a new text then raises an error saying the base
model is needed. Trainable modes need the base model files at load time.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.frame import TensorFrame
from ..registry import register
from .base import Encoder, masked_mean

__all__ = ["BertTextTower", "POOLINGS", "TRAINABLE_MODES"]

POOLINGS = ("mean", "cls")
TRAINABLE_MODES = ("frozen", "top_k_layers", "lora", "full")
DEFAULT_LR_SCALE = {"frozen": 1.0, "top_k_layers": 0.05, "lora": 0.2, "full": 0.02}
"""``lr_scale`` used when none is given: base lr 1e-3 → 5e-5 (top-k), 2e-4 (LoRA), 2e-5 (full)."""
EXTRA_FORMAT_VERSION = 1
MISSING_ROW = 0


def _is_missing(text: str) -> bool:
    return not text or text.isspace()


def _clean(text: Any) -> str:
    """A text cell as a string: None / NaN / NA become ``""`` (the missing text)."""
    if isinstance(text, str):
        return text
    if text is None:
        return ""
    try:
        import pandas as pd

        if pd.isna(text):
            return ""
    except (TypeError, ValueError):
        pass
    return str(text)


@contextmanager
def _hf_progress(enabled: bool):
    """Silence transformers' own weight-loading bars unless ``enabled``."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled and was:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not enabled and was:
            hf_logging.enable_progress_bar()


def load_encoder(model_name_or_path: str, progress_bar: bool = False) -> tuple[Any, nn.Module]:
    """``(tokenizer, model)`` of a BERT-family encoder, offline.

    ``model_name_or_path`` is a local folder (``config.json``, weights, tokenizer files) or the
    name of a model already in the local Hugging Face cache. Nothing is downloaded
    (``local_files_only=True``) and no code from the folder runs (``trust_remote_code=False``).
    The model comes back in float32 and eval mode.

    Raises:
        FileNotFoundError: the path does not exist / holds no ``config.json``.
        OSError: a name that is not in the local cache, or unreadable model files.
        ValueError: the folder holds a model that is not an encoder (e.g. GPT-2, T5).
    """
    try:
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
    except ImportError as e:  # pragma: no cover - transformers is a core dependency
        raise ImportError("BertTextTower needs transformers: pip install transformers") from e

    name = str(model_name_or_path)
    path = Path(name).expanduser()
    kw = {"local_files_only": True, "trust_remote_code": False}
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"text model path {str(path)!r} is not a transformers model folder (no "
                "config.json); pass the folder holding config.json, the weights and the tokenizer"
            )
        source = str(path)
    elif path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
        raise FileNotFoundError(f"text model path {name!r} does not exist")
    else:  # maybe a model name already in the local Hugging Face cache: find its folder here,
        # so that transformers only ever sees a local path (no request to the hub, even one)
        source = _cached_snapshot(name) or name
    try:
        if source is name:
            raise OSError(f"{name!r} is not in the local Hugging Face cache")
        config = AutoConfig.from_pretrained(source, **kw)
    except (OSError, ValueError) as e:
        if source is name:
            raise OSError(
                f"text model {name!r} is neither an existing local folder nor a model in the "
                "local Hugging Face cache; the text tower never downloads (local_files_only="
                "True), so pass the path of a folder holding config.json, the weights and the "
                f"tokenizer files ({type(e).__name__}: {e})"
            ) from e
        raise ValueError(f"cannot read the model config in {source!r}: {e}") from e
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False) or model_type not in (
        MODEL_FOR_MASKED_LM_MAPPING_NAMES
    ):
        raise ValueError(
            f"text model {source!r} has model_type {model_type!r}, which is not a BERT-family "
            "encoder (BERT, MiniLM, RoBERTa, DistilBERT, DeBERTa, ELECTRA, XLM-R, …)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kw)
        with _hf_progress(progress_bar):
            model = AutoModel.from_pretrained(source, **kw)
    except OSError as e:
        raise OSError(f"cannot load the text model / tokenizer from {source!r}: {e}") from e
    _check_tokenizer(tokenizer, config, source)
    return tokenizer, model.float().eval()


def _cached_snapshot(name: str) -> str | None:
    """The local folder of model ``name`` in the Hugging Face cache, or ``None``; no network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    try:
        found = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def _check_tokenizer(tokenizer: Any, config: Any, source: str) -> None:
    """Refuse a tokenizer that would silently turn text into ``[UNK]`` or into ids the model's
    embedding does not have."""
    size = len(tokenizer)
    if size <= len(set(tokenizer.all_special_ids)):
        raise ValueError(
            f"the tokenizer of {source!r} knows no token beyond its special tokens (are the "
            "tokenizer files missing? tokenizer.json, or vocab.txt / sentencepiece files): every "
            "word would be [UNK]"
        )
    rows = getattr(config, "vocab_size", None)
    if rows is not None and size > rows:
        raise ValueError(
            f"the tokenizer of {source!r} has {size} tokens but the model's embedding has "
            f"{rows} rows (config.vocab_size): tokenizer and weights do not belong together"
        )


def _layer_list(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer layers (the ModuleList as long as the layer count)."""
    cfg = model.config
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(
        f"cannot find the {n} transformer layers of {type(model).__name__} for "
        "trainable='top_k_layers'; use 'lora' or 'full'"
    )


@register("encoder", "bert_text")
class BertTextTower(Encoder):
    """A BERT-family encoder of one text feature, cached / deduplicated per distinct text.

    Args:
        model_name_or_path: local folder of a Hugging Face encoder (or a name already in the
            local HF cache). Loaded with ``local_files_only=True``, ``trust_remote_code=False``.
        feature: name of the :class:`~recsys_mt.data.Text` feature to encode.
        pooling: ``"mean"`` (masked mean of the last hidden states, as sentence-transformers'
            MiniLM) or ``"cls"`` (hidden state of the first token; the model's pooler is not used).
        max_length: tokens per text, special tokens included; longer texts are truncated.
        trainable: ``"frozen"`` (cache, base never trained), ``"top_k_layers"`` (the last
            ``top_k`` transformer layers train), ``"lora"`` (LoRA adapters via ``peft``; needs
            ``pip install recsys-mt[lora]``) or ``"full"``.
        top_k: layers unfrozen by ``"top_k_layers"``.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling (the update is scaled by ``lora_alpha / lora_r``).
        lora_dropout: dropout on the LoRA branch.
        lora_target_modules: module names that get adapters (default: peft's choice for the
            model type, e.g. ``["query", "value"]`` for BERT, else ``"all-linear"``).
        projection_dim: width of a learned linear projection of the pooled vector (``None``:
            no projection, the hidden size is the output width).
        lr_scale: learning-rate multiplier of the trainable base parameters (the projection and
            the missing vector use the normal lr); default 0.05 / 0.2 / 0.02 for
            top_k_layers / lora / full.
        history: name of a ``Sequence`` feature with ``vocab_from`` = the text's ``key``; adds
            the masked mean text vector of the history items to the output.
        batch_size: texts per base-model call when encoding the cache (frozen mode) and in
            :meth:`encode_texts`.
        progress_bar: show tqdm bars while encoding and loading.

    Output ``[B, out_dim]``: the row's text vector ``[B, d]`` (``d`` = ``projection_dim`` or the
    hidden size), followed with ``history`` by the history's mean text vector ``[B, d]``.
    """

    def __init__(
        self,
        model_name_or_path: str,
        feature: str = "title",
        pooling: str = "mean",
        max_length: int = 64,
        trainable: str = "frozen",
        top_k: int = 2,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | str | None = None,
        projection_dim: int | None = 64,
        lr_scale: float | None = None,
        history: str | None = None,
        batch_size: int = 64,
        progress_bar: bool = True,
    ):
        super().__init__()
        if not isinstance(model_name_or_path, (str, os.PathLike)) or not str(model_name_or_path):
            raise ValueError(f"model_name_or_path must be a path, got {model_name_or_path!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if trainable not in TRAINABLE_MODES:
            raise ValueError(f"trainable must be one of {TRAINABLE_MODES}, got {trainable!r}")
        if int(max_length) < 2:
            raise ValueError(
                f"max_length must be >= 2 (room for the special tokens), got {max_length}"
            )
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if projection_dim is not None and int(projection_dim) < 1:
            raise ValueError(f"projection_dim must be >= 1 or None, got {projection_dim}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if lr_scale is not None and not float(lr_scale) > 0:
            raise ValueError(f"lr_scale must be > 0, got {lr_scale}")
        if trainable == "lora":
            try:
                import peft  # noqa: F401
            except ImportError as e:
                raise ImportError(
                    "BertTextTower(trainable='lora') needs the optional dependency peft: "
                    "pip install recsys-mt[lora]"
                ) from e
        path = str(model_name_or_path)
        local = Path(path).expanduser()
        # keep a local folder as an absolute path so a saved config loads from any directory
        self.model_name_or_path = str(local.resolve()) if local.is_dir() else path
        self.feature = feature
        self.pooling = pooling
        self.max_length = int(max_length)
        self.trainable = trainable
        self.top_k = int(top_k)
        self.lora_r = int(lora_r)
        self.lora_alpha = int(lora_alpha)
        self.lora_dropout = float(lora_dropout)
        self.lora_target_modules = (
            list(lora_target_modules)
            if isinstance(lora_target_modules, (list, tuple))
            else lora_target_modules
        )
        self.projection_dim = None if projection_dim is None else int(projection_dim)
        self.lr_scale = None if lr_scale is None else float(lr_scale)
        self.history = history
        self.batch_size = int(batch_size)
        self.progress_bar = bool(progress_bar)

        self.base: nn.Module | None = None
        self.tokenizer: Any = None
        self.hidden_size = 0
        self.key: str | None = None
        self._texts: list[str] = [""]
        self._row_of: dict[str, int] = {"": MISSING_ROW}
        self._extra: dict[str, Any] | None = None
        self._built = False
        self.encoded_rows = 0
        """Texts encoded by the base model into the cache so far (frozen mode; for tests)."""

    # ------------------------------------------------------------------ properties
    @property
    def text_dim(self) -> int:
        """Width ``d`` of one text vector (``projection_dim`` or the hidden size)."""
        return self.projection_dim or self.hidden_size

    @property
    def effective_lr_scale(self) -> float:
        return self.lr_scale if self.lr_scale is not None else DEFAULT_LR_SCALE[self.trainable]

    @property
    def texts(self) -> list[str]:
        """The text table: ``texts[row]`` (row 0 is the missing text ``""``). A copy."""
        return list(self._texts)

    @property
    def num_texts(self) -> int:
        """Rows of the text table, including the missing row 0."""
        return len(self._texts)

    def _device(self) -> torch.device:
        return self.missing.device

    def extra_repr(self) -> str:
        return (
            f"{self.model_name_or_path!r}, feature={self.feature!r}, pooling={self.pooling!r}, "
            f"trainable={self.trainable!r}, max_length={self.max_length}, "
            f"projection_dim={self.projection_dim}, history={self.history!r}, "
            f"texts={self.num_texts}"
        )

    # ------------------------------------------------------------------ build
    def build(self, schema: Any) -> None:
        """Load the base model, set trainable parameters, create projection and buffers."""
        from ..data.features import Sequence, Text

        texts = [f.name for f in schema.texts]
        try:
            spec = schema.feature(self.feature)
        except KeyError:
            spec = None
        if not isinstance(spec, Text):
            raise ValueError(
                f"BertTextTower: feature {self.feature!r} is not a Text feature of the schema "
                f"(Text features: {texts})"
            )
        self.key = spec.key
        if self.history is not None:
            try:
                hist = schema.feature(self.history)
            except KeyError:
                hist = None
            if not isinstance(hist, Sequence):
                raise ValueError(
                    f"BertTextTower: history {self.history!r} is not a Sequence feature of the "
                    "schema"
                )
            if self.key is None or hist.vocab_from != self.key:
                raise ValueError(
                    f"BertTextTower: history {self.history!r} must share its ids with the text's "
                    f"key: Text({self.feature!r}, key=...) has key={self.key!r}, Sequence"
                    f"({self.history!r}) has vocab_from={hist.vocab_from!r}"
                )
        extra, self._extra = self._extra, None
        cache_only = self.trainable == "frozen" and extra is not None and "cache" in extra
        if cache_only:
            # a saved frozen tower: the cache covers its texts; load the base model only when a
            # new text shows up (it may not exist on this machine)
            self.base, self.tokenizer = None, None
            self.hidden_size = int(extra["hidden_size"])
        else:
            self._load_base()
        d = self.text_dim
        if self.projection_dim is not None:
            self.proj = nn.Linear(self.hidden_size, self.projection_dim)
        else:
            self.proj = nn.Identity()
        self.missing = nn.Parameter(torch.zeros(d))
        vocab = schema.vocab_size(self.key) if self.key is not None else 0
        self._vocab_values = schema.vocabulary(self.key) if self.key is not None else None
        self._id_of: dict[Any, int] | None = None
        self.register_buffer("item_rows", torch.zeros(vocab, dtype=torch.long), persistent=False)
        if self.trainable == "frozen":
            self.register_buffer("cache", torch.zeros(1, self.hidden_size), persistent=False)
        else:
            self.register_buffer(
                "token_ids", torch.zeros(1, self.max_length, dtype=torch.int32), persistent=False
            )
            self.register_buffer(
                "token_lengths", torch.zeros(1, dtype=torch.long), persistent=False
            )
        self._texts, self._row_of = [""], {"": MISSING_ROW}
        self.out_dim = d * (2 if self.history is not None else 1)
        self._built = True
        if extra is not None:
            self._restore(extra)

    def _load_base(self) -> None:
        tokenizer, model = load_encoder(self.model_name_or_path, self.progress_bar)
        max_pos = getattr(model.config, "max_position_embeddings", None)
        if max_pos is not None and self.max_length > max_pos:
            raise ValueError(
                f"max_length={self.max_length} exceeds the {max_pos} positions of "
                f"{self.model_name_or_path!r}"
            )
        hidden = int(model.config.hidden_size)
        if self.hidden_size and hidden != self.hidden_size:
            raise ValueError(
                f"text model {self.model_name_or_path!r} has hidden size {hidden}, but the saved "
                f"cache of feature {self.feature!r} has {self.hidden_size}: not the same model"
            )
        self.hidden_size = hidden
        for p in model.parameters():
            p.requires_grad_(False)
        if self.trainable == "top_k_layers":
            layers = _layer_list(model)
            if self.top_k > len(layers):
                raise ValueError(f"top_k={self.top_k} but the model has {len(layers)} layers")
            for layer in layers[len(layers) - self.top_k :]:
                for p in layer.parameters():
                    p.requires_grad_(True)
        elif self.trainable == "lora":
            model = self._add_lora(model)
        elif self.trainable == "full":
            for p in model.parameters():
                p.requires_grad_(True)
        pooler = getattr(model, "pooler", None)
        if isinstance(pooler, nn.Module):
            # neither pooling reads the pooler's output: a trainable pooler would get no
            # gradient (and break DDP's unused-parameter check)
            for p in pooler.parameters():
                p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.base = model
        if self.trainable == "frozen":
            model.eval()
        else:
            model.train(self.training)

    def _add_lora(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        targets = self.lora_target_modules
        if targets is None:
            targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(
                model.config.model_type, "all-linear"
            )
        config = LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=targets,
        )
        model = inject_adapter_in_model(config, model)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
        return model

    def _ensure_base(self, why: str) -> None:
        """Load the base model now (lazy after a cache-only load); clear error if impossible."""
        if self.base is not None:
            return
        try:
            self._load_base()
        except (OSError, ValueError, ImportError) as e:
            raise RuntimeError(
                f"BertTextTower({self.feature!r}): {why}; this needs the base model "
                f"{self.model_name_or_path!r}, which cannot be loaded here: {e}"
            ) from e
        self.base.to(self._device())

    def train(self, mode: bool = True) -> BertTextTower:
        super().train(mode)
        if self.base is not None and self.trainable == "frozen":
            self.base.eval()  # a frozen base never runs dropout
        return self

    # ------------------------------------------------------------------ text table
    def _tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """``(ids int32 [n, max_length], lengths int64 [n])``; truncated at ``max_length``."""
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        pad = self.tokenizer.pad_token_id or 0
        ids = np.full((len(enc), self.max_length), pad, dtype=np.int32)
        lengths = np.zeros(len(enc), dtype=np.int64)
        for i, seq in enumerate(enc):
            n = min(len(seq), self.max_length)
            ids[i, :n] = seq[:n]
            lengths[i] = n
        return torch.from_numpy(ids), torch.from_numpy(lengths)

    def _run_base(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Pooled vectors ``[n, hidden]`` of token rows ``ids [n, ≥max(lengths)]``.

        Pads only to the longest row given; runs under the caller's grad mode.
        """
        width = int(lengths.max())
        ids = ids[:, :width].long()
        mask = torch.arange(width, device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)
        hidden = self.base(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        return masked_mean(hidden, mask)

    def _encode_tokens(self, ids: Tensor, lengths: Tensor, desc: str) -> Tensor:
        """Frozen encoding of many token rows: ``[n, hidden]`` float32, batched by length."""
        from tqdm.auto import tqdm

        device = self._device()
        out = torch.empty(len(ids), self.hidden_size, dtype=torch.float32, device=device)
        order = torch.argsort(lengths, descending=True, stable=True)
        with (
            torch.no_grad(),
            tqdm(
                total=len(ids),
                desc=desc,
                unit="text",
                file=sys.stderr,
                disable=not self.progress_bar,
                leave=False,
            ) as bar,
        ):
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                pooled = self._run_base(ids[idx].to(device), lengths[idx].to(device))
                out[idx.to(device)] = pooled.float()
                bar.update(len(idx))
        self.encoded_rows += len(ids)
        return out

    def _rows_for(self, texts: list[str]) -> Tensor:
        """Table rows (int64 ``[n]``) of ``texts``, adding (and tokenising / encoding) new ones.

        All-or-nothing: if encoding fails (e.g. no base model after a cache-only load), the
        table is left unchanged.
        """
        rows = np.empty(len(texts), dtype=np.int64)
        new: dict[str, int] = {}
        start = len(self._texts)
        for i, t in enumerate(texts):
            t = _clean(t)
            if _is_missing(t):
                rows[i] = MISSING_ROW
                continue
            r = self._row_of.get(t)
            if r is None:
                r = new.get(t)
                if r is None:
                    r = new[t] = start + len(new)
            rows[i] = r
        if new:
            self._add_rows(list(new))
        return torch.from_numpy(rows)

    def _add_rows(self, new: list[str]) -> None:
        example = new[0] if len(new[0]) <= 60 else new[0][:57] + "..."
        self._ensure_base(f"{len(new)} text(s) are not in the saved text cache (e.g. {example!r})")
        ids, lengths = self._tokenize(new)
        if self.trainable == "frozen":
            vectors = self._encode_tokens(ids, lengths, f"encoding {self.feature}")
            self.cache = torch.cat([self.cache, vectors.to(self.cache.dtype)])
        else:
            dev = self.token_ids.device
            self.token_ids = torch.cat([self.token_ids, ids.to(dev)])
            self.token_lengths = torch.cat([self.token_lengths, lengths.to(dev)])
        for t in new:
            self._row_of[t] = len(self._texts)
            self._texts.append(t)

    def _check_built(self) -> None:
        if not self._built:
            raise RuntimeError(
                f"BertTextTower({self.feature!r}) is not built: put it in a MultiTaskModel first"
            )

    def _item_ids(self, ids: Any) -> np.ndarray:
        """Schema ids (int64) of raw item values via the key's vocabulary; 1 = unknown."""
        if self._vocab_values is None:
            raise ValueError(
                f"key feature {self.key!r} is hashed (no vocabulary): add_item_texts needs "
                "vocabulary ids"
            )
        if self._id_of is None:
            self._id_of = {v: i + 2 for i, v in enumerate(self._vocab_values)}
        kind_int = bool(self._vocab_values) and isinstance(self._vocab_values[0], (int, np.integer))
        out = np.empty(len(ids), dtype=np.int64)
        for i, v in enumerate(ids):
            if hasattr(v, "item"):
                v = v.item()
            try:
                v = int(v) if kind_int else str(v)
            except (TypeError, ValueError):
                out[i] = 1
                continue
            out[i] = self._id_of.get(v, 1)
        return out

    def add_item_texts(self, ids: Any, texts: Any) -> int:
        """Register a catalog: the text of each item (raw ids, as in the DataFrame's key column).

        Encodes the new texts now (frozen mode) so later batches and histories read them from the
        cache. Ids the schema does not know (OOV) and missing texts are skipped. Returns the
        number of items registered. Needs ``Text(feature, key=...)``.
        """
        self._check_built()
        if self.key is None:
            raise ValueError(
                f"add_item_texts needs Text({self.feature!r}, key=<item id feature>); this text "
                "is row-level"
            )
        ids, texts = list(ids), [_clean(t) for t in texts]
        if len(ids) != len(texts):
            raise ValueError(f"add_item_texts: {len(ids)} ids but {len(texts)} texts")
        item = self._item_ids(ids)
        rows = self._rows_for(texts).numpy()
        return self._learn_items(item, rows)

    def _learn_items(self, item: np.ndarray, rows: np.ndarray) -> int:
        """``item_rows[item] = rows`` for known items with text; the last occurrence wins."""
        sel = (item >= 2) & (rows > MISSING_ROW)
        item, rows = item[sel], rows[sel]
        if not len(item):
            return 0
        uniq, first_rev = np.unique(item[::-1], return_index=True)
        last = len(item) - 1 - first_rev
        dev = self.item_rows.device
        self.item_rows[torch.from_numpy(uniq).to(dev)] = torch.from_numpy(rows[last]).to(dev)
        return int(len(uniq))

    # ------------------------------------------------------------------ prepare / forward
    def prepare(self, frame: TensorFrame) -> TensorFrame:
        """A frame with ``"text_row/<feature>"`` (int64 ``[N]`` table rows) added.

        Adds the frame's new texts to the table (tokenised once; frozen: encoded once into the
        cache), learns ``item → text`` from rows that carry both, and fills rows with missing
        text from their item's known text. Returns a new :class:`TensorFrame` sharing the
        input's tensors; the input frame is not modified.
        """
        self._check_built()
        key = f"text/{self.feature}"
        table = frame.meta.get("texts", {}).get(self.feature)
        if key not in frame or table is None:
            raise KeyError(
                f"BertTextTower: the frame has no text feature {self.feature!r} ({key!r} and "
                "meta['texts']); transform it with a schema holding "
                f"Text({self.feature!r})"
            )
        local = self._rows_for(list(table))
        codes = frame[key].cpu()
        rows = local[codes] if len(local) else torch.zeros_like(codes)
        if self.key is not None:
            item = frame.column(self.key).cpu().numpy()
            self._learn_items(item, rows.numpy())
            missing = rows == MISSING_ROW
            if bool(missing.any()):
                known = self.item_rows.cpu()[torch.from_numpy(item)[missing]]
                rows = rows.clone()
                rows[missing] = known
        out = TensorFrame(dict(frame.tensors), frame.meta)
        out[f"text_row/{self.feature}"] = rows.to(frame.device)
        return out

    def _vectors(self, rows: Tensor) -> Tensor:
        """Text vectors ``[U, d]`` of *distinct* sorted table rows ``rows [U]``."""
        if self.trainable == "frozen":
            pooled = self.cache.index_select(0, rows)
        else:
            has_missing = bool(rows.numel()) and int(rows[0]) == MISSING_ROW
            todo = rows[1:] if has_missing else rows
            if todo.numel():
                pooled = self._run_base(
                    self.token_ids.index_select(0, todo), self.token_lengths.index_select(0, todo)
                )
            else:
                pooled = self.missing.new_zeros(0, self.hidden_size)
            if has_missing:
                pooled = torch.cat([pooled.new_zeros(1, pooled.shape[1]), pooled])
        z = self.proj(pooled.to(self.missing.dtype))
        return torch.where((rows == MISSING_ROW).unsqueeze(-1), self.missing.to(z.dtype), z)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, out_dim]``: the row's text vector, plus the history's mean text vector.

        Reads ``batch["text_row/<feature>"]`` (int64 ``[B]``, added by :meth:`prepare`) and,
        with ``history``, ``batch["seq/<history>"]`` (int64 ``[B, L]``). Only the distinct rows
        of the batch (row texts and history texts together) are encoded / projected.
        """
        rows = batch.get(f"text_row/{self.feature}")
        if rows is None:
            raise KeyError(
                f"BertTextTower({self.feature!r}): the batch has no 'text_row/{self.feature}' "
                "column; call model.prepare(frame) before batching (MultiTaskModel.predict / "
                "evaluate do it for you)"
            )
        if self.history is None:
            uniq, inv = torch.unique(rows, return_inverse=True)
            return self._vectors(uniq).index_select(0, inv)
        hist_rows = self.item_rows[batch[f"seq/{self.history}"]]  # [B, L]; 0 = no text
        both = torch.cat([rows, hist_rows.flatten()])
        uniq, inv = torch.unique(both, return_inverse=True)
        vec = self._vectors(uniq).index_select(0, inv)  # [B + B*L, d]
        row_vec = vec[: rows.shape[0]]
        hist_vec = vec[rows.shape[0] :].view(*hist_rows.shape, -1)  # [B, L, d]
        return torch.cat([row_vec, masked_mean(hist_vec, hist_rows != MISSING_ROW)], dim=-1)

    def encode_texts(self, texts: list[str]) -> Tensor:
        """Text vectors ``[n, d]`` of raw strings, computed now (no cache, no dedup).

        Tokenises and runs the base model on every string (batches of ``batch_size``), then
        projects; missing texts get the missing vector. Runs under the caller's grad mode, so
        it also serves as the per-row reference of the cached / deduplicated paths (and to
        encode queries at serving time). Does not add the texts to the table.
        """
        self._check_built()
        self._ensure_base("encode_texts runs the base model")
        texts = [_clean(t) for t in texts]
        device = self._device()
        pooled = self.missing.new_zeros(len(texts), self.hidden_size)
        present = [i for i, t in enumerate(texts) if not _is_missing(t)]
        parts = []
        for start in range(0, len(present), self.batch_size):
            idx = present[start : start + self.batch_size]
            ids, lengths = self._tokenize([texts[i] for i in idx])
            parts.append(self._run_base(ids.to(device), lengths.to(device)))
        if parts:
            index = torch.tensor(present, device=device)
            pooled = pooled.index_copy(0, index, torch.cat(parts).to(pooled.dtype))
        missing = torch.tensor([_is_missing(t) for t in texts], device=device)
        z = self.proj(pooled)
        return torch.where(missing.unsqueeze(-1), self.missing.to(z.dtype), z)

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, sparse: bool) -> list[dict[str, Any]]:
        """Projection + missing vector at the normal lr; trainable base weights at
        ``lr * lr_scale`` (none in frozen mode)."""
        head = [p for n, p in self.named_parameters() if not n.startswith("base.")]
        groups = [{"params": head, "name": f"text_{self.feature}"}]
        if self.base is not None:
            base = [p for p in self.base.parameters() if p.requires_grad]
            if base:
                groups.append(
                    {
                        "params": base,
                        "lr_scale": self.effective_lr_scale,
                        "name": f"text_{self.feature}_base",
                    }
                )
        return groups

    # ------------------------------------------------------------------ persistence
    def to_config(self) -> dict[str, Any]:
        return {
            "model_name_or_path": self.model_name_or_path,
            "feature": self.feature,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "trainable": self.trainable,
            "top_k": self.top_k,
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "lora_target_modules": self.lora_target_modules,
            "projection_dim": self.projection_dim,
            "lr_scale": self.lr_scale,
            "history": self.history,
            "batch_size": self.batch_size,
            "progress_bar": self.progress_bar,
        }

    def checkpoint_exclude(self) -> list[str]:
        """State-dict prefixes (relative to this encoder) left out of ``model.safetensors``:
        the whole base model when frozen, else its frozen parameters and buffers (for
        ``"full"`` only the unused pooler)."""
        if self.trainable == "frozen":
            return ["base."]
        if self.base is None:
            return []
        trainable = {n for n, p in self.base.named_parameters() if p.requires_grad}
        return [f"base.{n}" for n in self.base.state_dict() if n not in trainable]

    def _extra_paths(self, directory: str | os.PathLike) -> tuple[Path, Path]:
        d = Path(directory)
        return d / f"text_tower_{self.feature}.json", d / f"text_tower_{self.feature}.safetensors"

    def save_extra(self, directory: str | os.PathLike) -> None:
        """Write the text table (JSON) and the cache / item map (safetensors) to ``directory``."""
        from safetensors.torch import save_file

        self._check_built()
        meta_path, tensor_path = self._extra_paths(directory)
        tensors = {}
        if self.trainable == "frozen":
            tensors["cache"] = self.cache.detach().float().cpu().contiguous()
        if self.key is not None:
            tensors["item_rows"] = self.item_rows.cpu().contiguous()
        save_file(tensors, str(tensor_path), metadata={"format": "pt"})
        meta = {
            "format_version": EXTRA_FORMAT_VERSION,
            "feature": self.feature,
            "model_name_or_path": self.model_name_or_path,
            "trainable": self.trainable,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "hidden_size": self.hidden_size,
            "texts": self._texts,
        }
        meta_path.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    def load_extra(self, directory: str | os.PathLike) -> None:
        """Read what :meth:`save_extra` wrote; :meth:`build` applies it.

        ``MultiTaskModel.from_pretrained`` calls this before building the model. It also works as
        a disk cache of encodings between runs: ``tower.save_extra(dir)`` after preparing the
        frames, and in the next run ``tower.load_extra(dir)`` before the tower goes into a
        model (the saved model path, pooling and ``max_length`` must match).
        """
        from safetensors.torch import load_file

        if self._built:
            raise RuntimeError(
                f"BertTextTower({self.feature!r}).load_extra must be called before the tower is "
                "built (before MultiTaskModel(...))"
            )

        meta_path, tensor_path = self._extra_paths(directory)
        for p in (meta_path, tensor_path):
            if not p.is_file():
                raise FileNotFoundError(
                    f"BertTextTower({self.feature!r}): {p} is missing from the checkpoint"
                )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if (
            meta.get("format_version") != EXTRA_FORMAT_VERSION
            or meta.get("feature") != self.feature
        ):
            raise ValueError(f"{meta_path} is not a text table of feature {self.feature!r}")
        texts = meta["texts"]
        if not texts or texts[0] != "" or len(set(texts)) != len(texts):
            raise ValueError(f"{meta_path}: malformed text table")
        tensors = load_file(str(tensor_path))
        extra = {"texts": texts, "hidden_size": int(meta["hidden_size"])}
        if self.trainable == "frozen" and "cache" in tensors:
            ours = (self.model_name_or_path, self.pooling, self.max_length)
            theirs = (meta.get("model_name_or_path"), meta.get("pooling"), meta.get("max_length"))
            if ours != theirs:
                raise ValueError(
                    f"{tensor_path} caches vectors of (model, pooling, max_length) = {theirs}; "
                    f"this tower uses {ours}"
                )
            cache = tensors["cache"]
            if cache.shape != (len(texts), extra["hidden_size"]):
                raise ValueError(
                    f"{tensor_path}: cache of shape {tuple(cache.shape)} does not match "
                    f"{len(texts)} texts × {extra['hidden_size']}"
                )
            extra["cache"] = cache
        if "item_rows" in tensors:
            extra["item_rows"] = tensors["item_rows"]
        self._extra = extra

    def _restore(self, extra: dict[str, Any]) -> None:
        """Apply a loaded text table / cache / item map (end of :meth:`build`)."""
        texts = extra["texts"]
        self._texts = list(texts)
        self._row_of = {t: i for i, t in enumerate(texts)}
        if self.trainable == "frozen":
            if "cache" in extra:
                self.cache = extra["cache"].to(torch.float32)
            else:  # saved without a cache: encode the table again
                self._texts, self._row_of = [""], {"": MISSING_ROW}
                self._rows_for(texts[1:])
        elif len(texts) > 1:
            ids, lengths = self._tokenize(texts[1:])
            self.token_ids = torch.cat([self.token_ids, ids])
            self.token_lengths = torch.cat([self.token_lengths, lengths])
        if "item_rows" in extra:
            item_rows = extra["item_rows"].long()
            if item_rows.shape != self.item_rows.shape:
                raise ValueError(
                    f"BertTextTower({self.feature!r}): saved item map has {item_rows.shape[0]} "
                    f"ids, the schema's key {self.key!r} has {self.item_rows.shape[0]}"
                )
            if item_rows.numel() and int(item_rows.max()) >= len(texts):
                raise ValueError(f"BertTextTower({self.feature!r}): saved item map is corrupt")
            self.item_rows = item_rows
