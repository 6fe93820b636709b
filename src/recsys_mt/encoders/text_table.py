"""The text table of a :class:`~recsys_mt.encoders.text.BertTextTower`.

One row per distinct text (row 0 is the missing text ``""``), grown as frames bring new texts
and shared by every thread that uses the model. For each row the table keeps what the forward
pass reads — the frozen vector (``cache``) or the token ids — and whether the text belongs to
the *catalogue* (saved with the model) or was only seen while serving. It also holds the
``item id → row`` map of an item-level text — with, per item, whether its text came from a
serving frame, which never replaces a catalogue frame's text — and writes / reads all of it for
``save_extra`` / ``load_extra``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["MISSING_ROW", "TextTable", "clean_text", "is_missing"]

MISSING_ROW = 0
EXTRA_FORMAT_VERSION = 2
"""2: adds the fingerprint of the cached vectors and ``serving_rows``; version 1 still loads."""

Encode = Callable[[list[str]], dict[str, Tensor]]
"""Computes the buffers' rows of new texts: ``{"cache": [n, hidden]}`` or
``{"token_ids": [n, max_length], "token_lengths": [n]}``."""


def is_missing(text: str) -> bool:
    """Whether a (cleaned) text is the missing text: empty or whitespace only."""
    return not text or text.isspace()


def clean_text(text: Any) -> str:
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


class TextTable(nn.Module):
    """Distinct texts → rows, with the per-row tensors the forward pass reads.

    Buffers (not in the state dict; they follow the model's device and dtype): ``cache``
    (float32 ``[rows, hidden]``, frozen mode) or ``token_ids`` (int32 ``[rows, max_length]``) and
    ``token_lengths`` (int64 ``[rows]``); ``item_rows`` (int64 ``[vocab]``, 0 = no text). Beside
    them, ``item_serving`` (bool ``[vocab]``, numpy) marks the items whose text came from a
    serving frame (see :meth:`learn_items`).

    Thread safety: ``lock`` (re-entrant) is held while rows are assigned and their tensors
    computed and appended, so concurrent callers never share a row or see a row without its
    tensors. Buffers are replaced, never written in place, and swapped in together under a
    second, short lock, so :meth:`snapshot` hands a forward pass a consistent set of tensors
    that later growth does not touch, without waiting for an encoding in progress. The item map
    and ``item_serving`` are replaced together under that short lock, never in place.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.RLock()
        self._swap = threading.Lock()
        self.fingerprint: dict[str, Any] | None = None
        """Fingerprint of the model that computed ``cache`` (``None``: unknown)."""
        self._reset()

    def _reset(self) -> None:
        self._texts: list[str] = [""]
        self._row_of: dict[str, int] = {"": MISSING_ROW}
        self._catalogue: list[bool] = [True]
        self._item_serving = np.zeros(0, dtype=bool)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("lock", "_swap"):  # locks are neither copied nor pickled: each copy
            state.pop(name, None)  # gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.lock = threading.RLock()
        self._swap = threading.Lock()

    def setup(self, frozen: bool, hidden: int, max_length: int, vocab: int) -> None:
        """Empty table (only the missing row) with buffers for ``frozen`` or token mode."""
        with self.lock:
            self._reset()
            self.register_buffer("item_rows", torch.zeros(vocab, dtype=torch.long), False)
            if frozen:
                self.register_buffer("cache", torch.zeros(1, hidden), persistent=False)
            else:
                ids = torch.zeros(1, max_length, dtype=torch.int32)
                self.register_buffer("token_ids", ids, persistent=False)
                self.register_buffer("token_lengths", torch.zeros(1, dtype=torch.long), False)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._texts)

    @property
    def texts(self) -> list[str]:
        """``texts[row]`` (a copy)."""
        with self.lock:
            return list(self._texts)

    @property
    def catalogue_texts(self) -> list[str]:
        """The texts saved by default, in row order (row 0, ``""``, included)."""
        with self.lock:
            return [t for t, keep in zip(self._texts, self._catalogue) if keep]

    @property
    def item_serving(self) -> np.ndarray:
        """``[vocab]`` bool (a copy): whether each item's text came from a serving frame."""
        with self._swap:
            return self._serving_flags(self._buffers["item_rows"].shape[0]).copy()

    def _serving_flags(self, n: int) -> np.ndarray:
        """``item_serving`` for ``n`` ids (ids it does not cover yet: False). Read-only; the
        caller holds ``_swap``."""
        flags = self._item_serving
        if flags.shape[0] < n:
            flags = np.concatenate([flags, np.zeros(n - flags.shape[0], dtype=bool)])
        return flags[:n]

    def _buffer_names(self) -> list[str]:
        return [n for n in ("cache", "token_ids", "token_lengths") if n in self._buffers]

    def snapshot(self) -> dict[str, Tensor]:
        """The per-row buffers and ``item_rows`` as of now, taken together."""
        with self._swap:
            return {n: self._buffers[n] for n in (*self._buffer_names(), "item_rows")}

    def _publish(self, tensors: dict[str, Tensor]) -> None:
        """Swap in new buffers together (the caller holds ``lock``)."""
        with self._swap:
            self._buffers.update(tensors)

    # ------------------------------------------------------------------ growing
    def rows_for(self, texts: list[Any], encode: Encode, catalogue: bool) -> Tensor:
        """Rows (int64 ``[n]``) of ``texts``; new texts get rows and tensors from ``encode``.

        All-or-nothing: if ``encode`` raises, the table is unchanged. ``catalogue=True`` marks
        every given text (new or known) as catalogue; otherwise new texts are serving texts.
        """
        rows = self._known_rows(texts, catalogue)
        if rows is not None:
            return torch.from_numpy(rows)
        rows = np.empty(len(texts), dtype=np.int64)
        new: dict[str, int] = {}
        known: list[int] = []
        with self.lock:
            start = len(self._texts)
            for i, t in enumerate(texts):
                t = clean_text(t)
                if is_missing(t):
                    rows[i] = MISSING_ROW
                    continue
                r = self._row_of.get(t)
                if r is None:
                    r = new.get(t)
                    if r is None:
                        r = new[t] = start + len(new)
                else:
                    known.append(r)
                rows[i] = r
            if new:
                self.append(list(new), encode(list(new)), catalogue)
            if catalogue:
                for r in known:
                    self._catalogue[r] = True
        return torch.from_numpy(rows)

    def _known_rows(self, texts: list[Any], catalogue: bool) -> np.ndarray | None:
        """Rows of ``texts`` when every one is known (and, with ``catalogue``, marked so), else
        ``None``. Reads without the lock: a text gets its row only after its tensors are
        published, so a frame of known texts never waits for an encoding in progress."""
        rows = np.empty(len(texts), dtype=np.int64)
        for i, t in enumerate(texts):
            t = clean_text(t)
            r = MISSING_ROW if is_missing(t) else self._row_of.get(t)
            if r is None or (catalogue and not self._catalogue[r]):
                return None
            rows[i] = r
        return rows

    def append(self, texts: list[str], tensors: dict[str, Tensor], catalogue: bool) -> None:
        """Add rows for ``n`` new distinct ``texts`` with their buffer rows ``tensors``
        (``{name: [n, ...]}``)."""
        with self.lock:
            grown = {}
            for name, part in tensors.items():
                old = self._buffers[name]
                grown[name] = torch.cat([old, part.to(old.device, old.dtype)])
            self._publish(grown)
            for t in texts:  # the row last: lock-free readers find a text only when complete
                row = len(self._texts)
                self._texts.append(t)
                self._catalogue.append(catalogue)
                self._row_of[t] = row

    def replace(self, tensors: dict[str, Tensor], fingerprint: dict[str, Any] | None) -> None:
        """Swap in new tensors of rows 1.. (e.g. every vector computed again by another model)."""
        with self.lock:
            new = {}
            for name, part in tensors.items():
                old = self._buffers[name]
                new[name] = torch.cat([old[:1], part.to(old.device, old.dtype)])
            self._publish(new)
            self.fingerprint = fingerprint

    def learn_items(self, item: np.ndarray, rows: np.ndarray, catalogue: bool = True) -> int:
        """``item_rows[item] = rows`` (schema ids int64 ``[n]``, table rows int64 ``[n]``) for
        known items (id ≥ 2) with text; the last occurrence wins.

        ``catalogue=False`` (a serving frame) only sets items without a text yet or whose text
        came from a serving frame too: it never replaces a catalogue text. The items it sets are
        marked as serving items; ``catalogue=True`` sets every given item and clears the mark.
        Returns the number of items set. Copy-on-write under the short swap lock: a forward pass
        holding the old map keeps it, and no encoding in progress delays it."""
        sel = (item >= 2) & (rows > MISSING_ROW)
        item, rows = item[sel], rows[sel]
        if not len(item):
            return 0
        uniq, first_rev = np.unique(item[::-1], return_index=True)
        value = rows[len(item) - 1 - first_rev]
        with self._swap:
            old = self._buffers["item_rows"]
            flags = self._serving_flags(old.shape[0])
            current = old[torch.from_numpy(uniq).to(old.device)].cpu().numpy()
            if not catalogue:
                open_ = (current == MISSING_ROW) | flags[uniq]
                uniq, value, current = uniq[open_], value[open_], current[open_]
            changed = current != value
            if changed.any():
                updated = old.clone()
                index = torch.from_numpy(uniq[changed]).to(old.device)
                updated[index] = torch.from_numpy(value[changed]).to(old.device)
                self._buffers["item_rows"] = updated
            if bool((flags[uniq] != (not catalogue)).any()):
                flags = flags.copy()
                flags[uniq] = not catalogue
                self._item_serving = flags
        return int(len(uniq))

    def grow_items(self, vocab: int) -> int:
        """Extend ``item_rows`` to ``vocab`` ids (a grown key vocabulary); the new ids have no
        text until a frame or :meth:`learn_items` brings it. Copy-on-write under the swap
        lock, like :meth:`learn_items`. Returns the number of ids added."""
        with self._swap:
            old = self._buffers["item_rows"]
            added = int(vocab) - old.shape[0]
            if added < 0:
                raise ValueError(f"the item map cannot shrink from {old.shape[0]} to {vocab} ids")
            if added:
                self._buffers["item_rows"] = torch.cat([old, old.new_zeros(added)])
        return added

    def fill_from_items(self, item: np.ndarray, rows: Tensor) -> Tensor:
        """``rows`` (int64 ``[N]``) with its missing entries replaced by the known text row of
        their item (schema ids int64 ``[N]``)."""
        missing = rows == MISSING_ROW
        if not bool(missing.any()):
            return rows
        known = self.snapshot()["item_rows"].cpu()[torch.from_numpy(item)[missing]]
        rows = rows.clone()
        rows[missing] = known
        return rows

    # ------------------------------------------------------------------ save / load
    def save(
        self, meta_path: Path, tensor_path: Path, header: dict[str, Any], serving: bool
    ) -> None:
        """Write the table (JSON: ``header`` + texts) and its tensors (safetensors).

        Only catalogue texts are written unless ``serving``; the rows are renumbered, and an
        item whose text is left out maps to "no text". The items whose saved text came from a
        serving frame are listed (``serving_items``). The cache is saved as float32.
        """
        from safetensors.torch import save_file

        with self.lock:
            keep_flags = np.asarray(self._catalogue, dtype=bool)
            kept = np.arange(len(keep_flags)) if serving else np.flatnonzero(keep_flags)
            texts = [self._texts[r] for r in kept]
            tensors = {}
            index = torch.from_numpy(kept)
            if "cache" in self._buffers:
                tensors["cache"] = self._buffers["cache"].detach().float().cpu()[index]
            with self._swap:  # the item map and its serving marks as of one moment
                item_rows = self._buffers["item_rows"].cpu()
                item_serving = self._serving_flags(item_rows.shape[0])
            serving_items: list[int] = []
            if item_rows.numel():
                renumber = torch.zeros(len(keep_flags), dtype=torch.long)
                renumber[index] = torch.arange(len(kept))
                tensors["item_rows"] = renumber[item_rows]
                has_text = tensors["item_rows"].numpy() > MISSING_ROW
                serving_items = np.flatnonzero(item_serving & has_text).tolist()
            fingerprint = self.fingerprint if "cache" in tensors else None
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        save_file(tensors, str(tensor_path), metadata={"format": "pt"})
        meta = {
            "format_version": EXTRA_FORMAT_VERSION,
            **header,
            "fingerprint": fingerprint,
            "texts": texts,
            "serving_rows": np.flatnonzero(~keep_flags[kept]).tolist(),
            "serving_items": serving_items,
        }
        meta_path.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    @staticmethod
    def read(meta_path: Path, tensor_path: Path, feature: str) -> dict[str, Any]:
        """What :meth:`save` wrote, checked: ``{"texts", "serving_rows", "hidden_size",
        "fingerprint", "pooling", "max_length", ["serving_items"], ["cache"], ["item_rows"]}``
        (``serving_items`` only when saved: tables written before it lack it)."""
        from safetensors.torch import load_file

        for p in (meta_path, tensor_path):
            if not p.is_file():
                raise FileNotFoundError(
                    f"BertTextTower({feature!r}): {p} is missing from the checkpoint"
                )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        version = meta.get("format_version")
        if version not in (1, EXTRA_FORMAT_VERSION) or meta.get("feature") != feature:
            raise ValueError(f"{meta_path} is not a text table of feature {feature!r}")
        texts = meta["texts"]
        serving = meta.get("serving_rows", [])
        if not texts or texts[0] != "" or len(set(texts)) != len(texts):
            raise ValueError(f"{meta_path}: malformed text table")
        if any(not 0 < r < len(texts) for r in serving):
            raise ValueError(f"{meta_path}: malformed serving_rows")
        extra = {
            "texts": texts,
            "serving_rows": serving,
            "hidden_size": int(meta["hidden_size"]),
            "fingerprint": meta.get("fingerprint"),
            "pooling": meta.get("pooling"),
            "max_length": meta.get("max_length"),
        }
        if "serving_items" in meta:
            extra["serving_items"] = [int(i) for i in meta["serving_items"]]
        tensors = load_file(str(tensor_path))
        if "cache" in tensors:
            cache = tensors["cache"]
            if cache.shape != (len(texts), extra["hidden_size"]):
                raise ValueError(
                    f"{tensor_path}: cache of shape {tuple(cache.shape)} does not match "
                    f"{len(texts)} texts × {extra['hidden_size']}"
                )
            extra["cache"] = cache
        if "item_rows" in tensors:
            extra["item_rows"] = tensors["item_rows"]
        return extra

    def restore(self, extra: dict[str, Any], encode: Encode, feature: str) -> None:
        """Fill the (just set up) table from :meth:`read`'s result; rows without saved tensors
        are computed with ``encode``."""
        texts = extra["texts"]
        with self.lock:
            if "cache" in extra and "cache" in self._buffers:
                self._publish({"cache": extra["cache"].to(torch.float32)})
                self.append(texts[1:], {}, catalogue=True)
                self.fingerprint = extra.get("fingerprint")
            elif len(texts) > 1:
                self.append(texts[1:], encode(texts[1:]), catalogue=True)
            for r in extra["serving_rows"]:
                self._catalogue[r] = False
            if "item_rows" in extra:
                item_rows = extra["item_rows"].long()
                if item_rows.shape != self._buffers["item_rows"].shape:
                    raise ValueError(
                        f"BertTextTower({feature!r}): saved item map has {item_rows.shape[0]} "
                        f"ids, the schema's key has {self._buffers['item_rows'].shape[0]}"
                    )
                if item_rows.numel() and int(item_rows.max()) >= len(texts):
                    raise ValueError(f"BertTextTower({feature!r}): saved item map is corrupt")
                flags = np.zeros(item_rows.shape[0], dtype=bool)
                if "serving_items" in extra:
                    marked = np.asarray(extra["serving_items"], dtype=np.int64)
                    if marked.size and not (0 <= marked.min() and marked.max() < flags.size):
                        raise ValueError(f"BertTextTower({feature!r}): corrupt serving_items")
                    flags[marked] = True
                else:  # older tables: the items whose text is a serving text
                    serving = np.zeros(len(texts), dtype=bool)
                    serving[np.asarray(extra["serving_rows"], dtype=np.int64)] = True
                    flags = serving[item_rows.numpy()]
                with self._swap:
                    self._buffers["item_rows"] = item_rows
                    self._item_serving = flags
