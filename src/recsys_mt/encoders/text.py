"""``BertTextTower``: a BERT-family text encoder that costs once per distinct text.

The tower turns one :class:`~recsys_mt.data.Text` feature into a vector per row, ``[B, d]``,
using any Hugging Face encoder (BERT, MiniLM, RoBERTa, DistilBERT, …) loaded *offline* from a
local folder (:mod:`~recsys_mt.encoders.text_loading`). Every distinct text gets one row of a
shared, thread-safe text table (:mod:`~recsys_mt.encoders.text_table`): frozen, its vector is
computed once into a cache; trainable, its tokens are stored once and each step encodes only the
distinct rows of the batch. ::

    tower = rm.BertTextTower("path/to/all-MiniLM-L6-v2", feature="title", projection_dim=64)
    model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), tower])
    train = model.prepare(train)            # tokenise (and, frozen, encode) each text once
    rm.Trainer(max_epochs=3).fit(model, train, model.prepare(val))

Missing texts (None / NaN / blank) map to row 0 and a learned vector. An item-level text
(``Text(name, key="item_id")``) also learns ``item id → text`` and, with ``history``, adds the
mean text vector of a user's history items. With ``query``, a row-level query text shares the
tower (one base model, one text table) and its relevance to the text is part of the output
(``docs/search.md``). ``save_extra`` keeps the catalogue's texts and
their cached vectors (keyed by the model's fingerprint), not the texts seen only at serving
time. The guide ``docs/text_tower.md`` has the details.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.frame import TensorFrame
from ..registry import register
from .text_backbone import DEFAULT_LR_SCALE, POOLINGS, TRAINABLE_MODES, TextBackbone
from .text_encoding import tokenize
from .text_loading import load_encoder, saved_vectors_changes
from .text_output import TextLookup, tower_output, unit_vectors
from .text_table import MISSING_ROW, TextTable, clean_text, is_missing

__all__ = [
    "BertTextTower",
    "DEFAULT_LR_SCALE",
    "POOLINGS",
    "TRAINABLE_MODES",
    "is_catalogue_frame",
    "load_encoder",
]

CATALOGUE_FLAG = "text_catalogue"
"""``frame.meta`` key that overrides whether a frame's texts are catalogue texts."""


def is_catalogue_frame(frame: TensorFrame) -> bool:
    """Whether :meth:`BertTextTower.prepare` marks ``frame``'s texts as catalogue texts.

    ``frame.meta["text_catalogue"]`` when set; else whether the frame carries labels (training,
    validation and test data do; serving requests do not).
    """
    flag = frame.meta.get(CATALOGUE_FLAG)
    return bool(flag) if flag is not None else "labels" in frame


def _table_buffer(name: str, doc: str) -> property:
    """A read-only attribute that reads buffer ``name`` of the tower's text table."""
    return property(lambda self: getattr(self.table, name), doc=doc)


@register("encoder", "bert_text")
class BertTextTower(TextBackbone):
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
        query: name of a row-level :class:`~recsys_mt.data.Text` feature (e.g. a search query)
            encoded by the same base model, projection and text table; adds the query vector
            and, with ``query_interaction``, the (query, text) relevance to the output.
        query_interaction: with ``query``, also output the (query, text) relevance ``[B, 2 + d]``:
            the cosine of their base-model (pooled) vectors, the cosine of their text vectors
            and the elementwise product of their text vectors.
        batch_size: texts per base-model call when encoding the cache (frozen mode) and in
            :meth:`encode_texts`.
        progress_bar: show tqdm bars while encoding and loading.
        save_serving_texts: :meth:`save_extra` also writes the texts seen only at serving time
            (default: catalogue texts only, see :func:`is_catalogue_frame`).

    Output ``[B, out_dim]``: the row's text vector ``[B, d]`` (``d`` = ``projection_dim`` or the
    hidden size), followed with ``history`` by the history's mean text vector ``[B, d]``, and
    with ``query`` by the query vector ``[B, d]`` and the relevance ``[B, 2 + d]``
    (``query_interaction``).
    """

    # ------------------------------------------------------------------ the text table
    @property
    def texts(self) -> list[str]:
        """The text table: ``texts[row]`` (row 0 is the missing text ``""``). A copy."""
        return self.table.texts

    @property
    def catalogue_texts(self) -> list[str]:
        """The texts :meth:`save_extra` writes by default (row 0 ``""`` first). A copy."""
        return self.table.catalogue_texts

    @property
    def num_texts(self) -> int:
        """Rows of the text table, including the missing row 0."""
        return len(self.table)

    cache = _table_buffer(
        "cache", "Frozen vectors of the table's rows, float32 ``[rows, hidden]``."
    )
    token_ids = _table_buffer(
        "token_ids", "Trainable modes: token ids of the table's rows, int32 ``[rows, max_length]``."
    )
    token_lengths = _table_buffer(
        "token_lengths", "Trainable modes: tokens per row, int64 ``[rows]``."
    )
    item_rows = _table_buffer(
        "item_rows", "Table row of each item id of the key, int64 ``[vocab]`` (0 = no known text)."
    )

    def _item_ids(self, ids: Any) -> np.ndarray:
        """Schema ids (int64) of raw item values, as ``Schema.transform`` encodes the key
        (vocabulary, hashed, keyed or anonymised alike); 1 = unknown."""
        return np.asarray(self._encode_key(list(ids)), dtype=np.int64)

    def add_item_texts(self, ids: Any, texts: Any) -> int:
        """Register a catalogue: the text of each item (raw ids, as in the DataFrame's key column).

        ``ids`` and ``texts`` are sequences of length ``n``. The texts become catalogue texts
        (saved with the model). Encodes the new texts now (frozen mode) so later batches and
        histories read them from the cache. Ids the schema does not know (OOV) and missing
        texts are skipped. Returns the number of items registered. Needs
        ``Text(feature, key=...)``.
        """
        self._check_built()
        if self.key is None:
            raise ValueError(
                f"add_item_texts needs Text({self.feature!r}, key=<item id feature>); this text "
                "is row-level"
            )
        ids, texts = list(ids), [clean_text(t) for t in texts]
        if len(ids) != len(texts):
            raise ValueError(f"add_item_texts: {len(ids)} ids but {len(texts)} texts")
        rows = self.table.rows_for(texts, self._encode_new, catalogue=True)
        return self.table.learn_items(self._item_ids(ids), rows.numpy())

    # ------------------------------------------------------------------ prepare / forward
    def prepare(self, frame: TensorFrame) -> TensorFrame:
        """A frame with ``"text_row/<feature>"`` (int64 ``[N]`` table rows) added.

        Adds the frame's new texts to the table (tokenised once; frozen: encoded once into the
        cache), learns ``item → text`` from rows that carry both, and fills rows with missing
        text from their item's known text. The texts of a labelled frame (or one with
        ``frame.meta["text_catalogue"] = True``) become catalogue texts; a serving frame never
        replaces an item's catalogue text (``TextTable.learn_items``). Safe to call from
        several threads at once. Returns a new :class:`TensorFrame` sharing the input's tensors;
        the input frame is not modified.
        """
        self._check_built()
        for name in (self.feature, self.query):
            if name is not None and (
                f"text/{name}" not in frame or name not in frame.meta.get("texts", {})
            ):
                raise KeyError(
                    f"BertTextTower: the frame has no text feature {name!r} ('text/{name}' and "
                    f"meta['texts']); transform it with a schema holding Text({name!r})"
                )
        rows = self._table_rows(frame, self.feature)
        if self.key is not None:
            item = frame.column(self.key).cpu().numpy()
            self.table.learn_items(item, rows.numpy(), is_catalogue_frame(frame))
            rows = self.table.fill_from_items(item, rows)
        out = TensorFrame(dict(frame.tensors), frame.meta)
        out[f"text_row/{self.feature}"] = rows.to(frame.device)
        if self.query is not None:
            out[f"text_row/{self.query}"] = self._table_rows(frame, self.query).to(frame.device)
        return out

    def _table_rows(self, frame: TensorFrame, name: str) -> Tensor:
        """Table rows (int64 ``[N]``, CPU) of text feature ``name`` of ``frame``; adds new texts."""
        texts = list(frame.meta["texts"][name])
        local = self.table.rows_for(texts, self._encode_new, is_catalogue_frame(frame))
        codes = frame[f"text/{name}"].cpu()
        return local[codes] if len(local) else torch.zeros_like(codes)

    def _vectors(
        self, rows: Tensor, table: dict[str, Tensor], units: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Text vectors ``[U, d]`` of *distinct* sorted table rows ``rows [U]``, and with
        ``units`` the unit pooled vectors of the base model ``[U, hidden]`` (zeros for the
        missing row; else ``None``)."""
        if self.trainable == "frozen":
            pooled = table["cache"].index_select(0, rows)
        else:
            has_missing = bool(rows.numel()) and int(rows[0]) == MISSING_ROW
            todo = rows[1:] if has_missing else rows
            if todo.numel():
                pooled = self._run_base(
                    table["token_ids"].index_select(0, todo),
                    table["token_lengths"].index_select(0, todo),
                )
            else:
                pooled = self.missing.new_zeros(0, self.hidden_size)
            if has_missing:
                pooled = torch.cat([pooled.new_zeros(1, pooled.shape[1]), pooled])
        pooled = pooled.to(self.missing.dtype)
        z = self.proj(pooled)
        z = torch.where((rows == MISSING_ROW).unsqueeze(-1), self.missing.to(z.dtype), z)
        return z, (unit_vectors(pooled) if units else None)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, out_dim]``: the row's text vector, plus the history's mean text vector.

        Reads ``batch["text_row/<feature>"]`` (int64 ``[B]``, added by :meth:`prepare`) and,
        with ``history``, ``batch["seq/<history>"]`` (int64 ``[B, L]``). Only the distinct rows
        of the batch (row texts and history texts together) are encoded / projected, from one
        snapshot of the text table.
        """
        vec, unit, (row, query, hist), hist_rows = self.lookup_rows(batch)
        row_vec, query_vec, hist_vec, hist_mask, units = vec.index_select(0, row), *[None] * 4
        if query is not None:
            query_vec = vec.index_select(0, query)
            if unit is not None:
                units = (unit.index_select(0, query), unit.index_select(0, row))
        if hist is not None:
            hist_vec = vec.index_select(0, hist).view(*hist_rows.shape, -1)  # [B, L, d]
            hist_mask = hist_rows != MISSING_ROW
        return tower_output(row_vec, hist_vec, hist_mask, query_vec, self.query_interaction, units)

    def lookup_rows(self, batch: dict[str, Tensor]) -> tuple:
        """The batch's texts looked up together, from one snapshot of the text table:
        ``(vectors [U, d], units [U, h] | None, (row [B], query [B] | None, history [B·L] |
        None), history table rows [B, L] | None)``, where the three index tensors point into
        the ``U`` distinct rows (row texts, query texts and history texts), each encoded or
        projected once; ``units`` (base-model unit vectors) only with query relevance. Gather
        with ``index_select``: its backward (``index_add_``) sums repeated rows' gradients
        deterministically on the CPU, which advanced indexing's does not."""
        rows = batch.get(f"text_row/{self.feature}")
        if rows is None:
            raise KeyError(
                f"BertTextTower({self.feature!r}): the batch has no 'text_row/{self.feature}' "
                "column; call model.prepare(frame) before batching (MultiTaskModel.predict / "
                "evaluate do it for you)"
            )
        table = self.table.snapshot()
        parts = [rows]
        if self.query is not None:
            query_rows = batch.get(f"text_row/{self.query}")
            if query_rows is None:
                raise KeyError(
                    f"BertTextTower({self.feature!r}): the batch has no 'text_row/{self.query}' "
                    "column (the query); call model.prepare(frame) before batching"
                )
            parts.append(query_rows)
        hist_rows = None
        if self.history is not None:
            hist_rows = table["item_rows"][batch[f"seq/{self.history}"]]  # [B, L]; 0 = no text
            parts.append(hist_rows.flatten())
        uniq, inv = torch.unique(torch.cat(parts), return_inverse=True)
        relevance = self.query is not None and self.query_interaction
        vec, unit = self._vectors(uniq, table, units=relevance)
        index = list(inv.split([p.shape[0] for p in parts]))
        row = index.pop(0)
        query = index.pop(0) if self.query is not None else None
        hist = index.pop(0) if self.history is not None else None
        return vec, unit, (row, query, hist), hist_rows

    def export_module(self) -> TextLookup:
        """This tower as a :class:`~recsys_mt.encoders.text_output.TextLookup` for ONNX export.

        Computes the text vector of every row of the text table now (frozen: the projected
        cache; trainable: each known text encoded once, in eval mode, in batches of
        ``batch_size``), under ``no_grad``. Texts added later are not in the lookup.
        """
        self._check_built()
        was_training = self.training
        self.eval()
        try:
            with self.table.lock, torch.no_grad():
                texts, table = self.table.texts, self.table.snapshot()
                rows = torch.arange(len(texts), device=self._device())
                relevance = self.query is not None and self.query_interaction
                parts = [
                    self._vectors(r, table, units=relevance) for r in rows.split(self.batch_size)
                ]
        finally:
            self.train(was_training)
        item_rows = table["item_rows"] if self.key is not None else None
        units = torch.cat([u for _, u in parts]) if relevance else None
        return TextLookup(
            torch.cat([v for v, _ in parts]),
            texts,
            self.feature,
            self.key,
            item_rows,
            self.history,
            self.query,
            self.query_interaction,
            units,
        )

    def encode_texts(self, texts: list[str]) -> Tensor:
        """Text vectors ``[n, d]`` of ``n`` raw strings, computed now (no cache, no dedup).

        Tokenises and runs the base model on every string (batches of ``batch_size``), then
        projects; missing texts get the missing vector. Runs under the caller's grad mode, so
        it also serves as the per-row reference of the cached / deduplicated paths (and to
        encode queries at serving time). Does not add the texts to the table.
        """
        self._check_built()
        self._ensure_base("encode_texts runs the base model")
        texts = [clean_text(t) for t in texts]
        device = self._device()
        pooled = self.missing.new_zeros(len(texts), self.hidden_size)
        present = [i for i, t in enumerate(texts) if not is_missing(t)]
        parts = []
        for start in range(0, len(present), self.batch_size):
            idx = present[start : start + self.batch_size]
            ids, lengths = tokenize(self.tokenizer, [texts[i] for i in idx], self.max_length)
            parts.append(self._run_base(ids.to(device), lengths.to(device)))
        if parts:
            index = torch.tensor(present, device=device)
            pooled = pooled.index_copy(0, index, torch.cat(parts).to(pooled.dtype))
        missing = torch.tensor([is_missing(t) for t in texts], device=device)
        z = self.proj(pooled)
        return torch.where(missing.unsqueeze(-1), self.missing.to(z.dtype), z)

    # ------------------------------------------------------------------ persistence
    def _extra_paths(self, directory: str | os.PathLike) -> tuple[Path, Path]:
        d = Path(directory)
        return d / f"text_tower_{self.feature}.json", d / f"text_tower_{self.feature}.safetensors"

    def save_extra(self, directory: str | os.PathLike) -> None:
        """Write the text table (``text_tower_<feature>.json``) and the frozen cache / item map
        (``text_tower_<feature>.safetensors``) to ``directory``, creating it if needed.

        Only catalogue texts (and their vectors) are written unless ``save_serving_texts``;
        the cache is stored with the fingerprint of the model that computed it.
        """
        self._check_built()
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise NotADirectoryError(
                f"BertTextTower({self.feature!r}).save_extra: {str(directory)!r} is not a folder"
            ) from e
        header = {
            "feature": self.feature,
            "model_name_or_path": self.model_name_or_path,
            "trainable": self.trainable,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "hidden_size": self.hidden_size,
            "query": self.query,
        }
        self.table.save(*self._extra_paths(directory), header, self.save_serving_texts)

    def load_extra(self, directory: str | os.PathLike) -> None:
        """Read what :meth:`save_extra` wrote; :meth:`build` applies it.

        ``MultiTaskModel.from_pretrained`` calls this before building the model. It also works as
        a disk cache of encodings between runs: ``tower.save_extra(dir)`` after preparing the
        frames, and in the next run ``tower.load_extra(dir)`` before the tower goes into a
        model. Saved vectors are reused only when their fingerprint matches the model found at
        ``model_name_or_path`` with this ``max_length`` and ``pooling`` (wherever the model
        was when they were saved); otherwise they are dropped with a warning and computed again.
        When the model is not here at all, they are trusted until it is needed.
        """
        if self._built:
            raise RuntimeError(
                f"BertTextTower({self.feature!r}).load_extra must be called before the tower is "
                "built (before MultiTaskModel(...))"
            )
        meta_path, tensor_path = self._extra_paths(directory)
        extra = TextTable.read(meta_path, tensor_path, self.feature)
        if self.trainable != "frozen":
            extra.pop("cache", None)
        elif "cache" in extra:
            changes = saved_vectors_changes(
                extra, self.model_name_or_path, self.max_length, self.pooling
            )
            if changes:
                warnings.warn(
                    f"BertTextTower({self.feature!r}): the vectors in {tensor_path} were not "
                    f"computed by {self.model_name_or_path!r} with these settings "
                    f"({'; '.join(changes)}); they will be computed again",
                    stacklevel=2,
                )
                del extra["cache"]
        self._extra = extra
