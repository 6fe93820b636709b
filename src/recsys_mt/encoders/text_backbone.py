"""The settings, base model and text table of a text tower, built from a schema.

:class:`TextBackbone` is the part of :class:`~recsys_mt.encoders.text.BertTextTower` that owns
the Hugging Face base model: it checks the arguments, builds the projection and the
:class:`~recsys_mt.encoders.text_table.TextTable`, loads the base model (lazily after a
cache-only load, checking the cached vectors' fingerprint then), computes the table's tensors
of new texts, and reports optimiser groups, config and checkpoint exclusions.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .base import Encoder
from .text_encoding import encode_sorted, pooled, set_trainable, tokenize
from .text_loading import encoder_fingerprint, fingerprint_changes, load_encoder, model_folder
from .text_table import TextTable

__all__ = ["DEFAULT_LR_SCALE", "POOLINGS", "TRAINABLE_MODES", "TextBackbone"]

POOLINGS = ("mean", "cls")
TRAINABLE_MODES = ("frozen", "top_k_layers", "lora", "full")
DEFAULT_LR_SCALE = {"frozen": 1.0, "top_k_layers": 0.05, "lora": 0.2, "full": 0.02}
"""``lr_scale`` used when none is given: base lr 1e-3 → 5e-5 (top-k), 2e-4 (LoRA), 2e-5 (full)."""


def _feature_of(schema: Any, name: str, kind: type) -> Any:
    """Feature ``name`` of ``schema`` if it exists and is a ``kind``, else ``None``."""
    try:
        spec = schema.feature(name)
    except KeyError:
        return None
    return spec if isinstance(spec, kind) else None


class TextBackbone(Encoder):
    """Settings, base model and text table of a text tower; see
    :class:`~recsys_mt.encoders.text.BertTextTower` for the arguments."""

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
        query: str | None = None,
        query_interaction: bool = True,
        batch_size: int = 64,
        progress_bar: bool = True,
        save_serving_texts: bool = False,
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
        if query is not None and (not isinstance(query, str) or query == feature):
            raise ValueError(
                f"query must be the name of another Text feature than {feature!r}, got {query!r}"
            )
        self.query = query
        self.query_interaction = bool(query_interaction)
        self.batch_size = int(batch_size)
        self.progress_bar = bool(progress_bar)
        self.save_serving_texts = bool(save_serving_texts)

        self.base: nn.Module | None = None
        self.tokenizer: Any = None
        self.hidden_size = 0
        self.key: str | None = None
        self.table = TextTable()
        self._fingerprint: dict[str, Any] | None = None
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

    def _device(self) -> torch.device:
        return self.missing.device

    def extra_repr(self) -> str:
        return (
            f"{self.model_name_or_path!r}, feature={self.feature!r}, pooling={self.pooling!r}, "
            f"trainable={self.trainable!r}, max_length={self.max_length}, "
            f"projection_dim={self.projection_dim}, history={self.history!r}, "
            f"query={self.query!r}, "
            f"texts={len(self.table)}"
        )

    # ------------------------------------------------------------------ build
    def build(self, schema: Any) -> None:
        """Load the base model, set trainable parameters, create projection and buffers."""
        from ..data.features import Sequence, Text

        spec = _feature_of(schema, self.feature, Text)
        if spec is None:
            raise ValueError(
                f"BertTextTower: feature {self.feature!r} is not a Text feature of the schema "
                f"(Text features: {[f.name for f in schema.texts]})"
            )
        self.key = spec.key
        if self.history is not None:
            hist = _feature_of(schema, self.history, Sequence)
            if hist is None:
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
        if self.query is not None:
            qspec = _feature_of(schema, self.query, Text)
            if qspec is None or qspec.key is not None:
                raise ValueError(
                    f"BertTextTower: query {self.query!r} must be a row-level Text feature of "
                    f"the schema (Text({self.query!r}) without key)"
                )
        extra, self._extra = self._extra, None
        if extra is not None and "cache" in extra:
            # a saved frozen tower: the cache covers its texts; load the base model only when a
            # new text shows up (it may not exist on this machine)
            self.base, self.tokenizer = None, None
            self.hidden_size = int(extra["hidden_size"])
        else:
            self._load_base()
        d = self.text_dim
        self.proj = nn.Linear(self.hidden_size, d) if self.projection_dim else nn.Identity()
        self.missing = nn.Parameter(torch.zeros(d))
        vocab = schema.vocab_size(self.key) if self.key is not None else 0
        key = self.key
        self._encode_key = (lambda ids: schema.encode_ids(key, ids)) if key is not None else None
        frozen = self.trainable == "frozen"
        self.table.setup(frozen, self.hidden_size, self.max_length, vocab)
        self.table.fingerprint = self._fingerprint
        self.out_dim = self._out_dim(d)
        self._built = True
        if extra is not None:
            self.table.restore(extra, self._encode_new, self.feature)

    def grow(self, old_schema: Any, new_schema: Any) -> None:
        """Follow a grown vocabulary (``MultiTaskModel.grow``): with an item key, the
        ``item id → text`` map gets the new ids, without text until a frame carrying their
        texts is prepared (or :meth:`add_item_texts` registers them), and raw ids are encoded
        with ``new_schema`` from now on. The texts, their vectors and every parameter stay as
        they are, so known items and rows with their own text score exactly as before. A
        row-level text (no key) has nothing to grow."""
        self._check_built()
        if self.key is None:
            return
        key = self.key
        self.table.grow_items(new_schema.vocab_size(key))
        self._encode_key = lambda ids: new_schema.encode_ids(key, ids)

    def _out_dim(self, d: int) -> int:
        """Output width for text vectors of width ``d`` (see ``tower_output``)."""
        width = d * (2 if self.history is not None else 1)
        if self.query is not None:
            width += d + (2 + d if self.query_interaction else 0)
        return width

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
        lora = {
            "r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.lora_target_modules,
        }
        model = set_trainable(model, self.trainable, self.top_k, lora)
        if self.trainable == "frozen":
            folder = model_folder(self.model_name_or_path)
            self._fingerprint = (
                encoder_fingerprint(folder, self.max_length, self.pooling) if folder else None
            )
        self.tokenizer = tokenizer
        self.base = model.train(self.training and self.trainable != "frozen")

    def _ensure_base(self, why: str) -> None:
        """Load the base model now (lazy after a cache-only load); clear error if impossible.

        The cached vectors are then checked against the loaded model's fingerprint and computed
        again, with a warning, when they come from another model or other settings.
        """
        with self.table.lock:
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
            changes = fingerprint_changes(self.table.fingerprint, self._fingerprint or {})
            if self.trainable == "frozen" and len(self.table) > 1 and changes:
                warnings.warn(
                    f"BertTextTower({self.feature!r}): the cached vectors were not computed by "
                    f"the model now at {self.model_name_or_path!r} ({'; '.join(changes)}); "
                    f"encoding the {len(self.table) - 1} cached texts again",
                    stacklevel=3,
                )
                self.table.replace(self._encode_new(self.table.texts[1:]), self._fingerprint)
            self.table.fingerprint = self._fingerprint

    def train(self, mode: bool = True) -> TextBackbone:
        super().train(mode)
        if self.base is not None and self.trainable == "frozen":
            self.base.eval()  # a frozen base never runs dropout
        return self

    # ------------------------------------------------------------------ encoding
    def _run_base(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Pooled vectors ``[n, hidden]`` of token rows ``ids [n, ≥max(lengths)]``."""
        return pooled(self.base, ids, lengths, self.pooling)

    def _encode_new(self, texts: list[str]) -> dict[str, Tensor]:
        """The table's tensors for new distinct texts (called under the table's lock)."""
        example = texts[0] if len(texts[0]) <= 60 else texts[0][:57] + "..."
        self._ensure_base(
            f"{len(texts)} text(s) are not in the saved text cache (e.g. {example!r})"
        )
        ids, lengths = tokenize(self.tokenizer, texts, self.max_length)
        if self.trainable != "frozen":
            return {"token_ids": ids, "token_lengths": lengths}
        bar = f"encoding {self.feature}" if self.progress_bar else None
        vectors = encode_sorted(
            self.base, ids, lengths, self.pooling, self.batch_size, self._device(), bar
        )
        self.encoded_rows += len(texts)
        return {"cache": vectors}

    def _check_built(self) -> None:
        if not self._built:
            raise RuntimeError(
                f"BertTextTower({self.feature!r}) is not built: put it in a MultiTaskModel first"
            )

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

    # ------------------------------------------------------------------ config / checkpoint
    def to_config(self) -> dict[str, Any]:
        names = (
            "model_name_or_path feature pooling max_length trainable top_k lora_r lora_alpha "
            "lora_dropout lora_target_modules projection_dim lr_scale history query "
            "query_interaction batch_size progress_bar save_serving_texts"
        ).split()
        return {n: getattr(self, n) for n in names}

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
