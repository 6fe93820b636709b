"""Loading a BERT-family encoder offline, and the fingerprint of the vectors it computes.

:func:`load_encoder` reads a local folder (or a model already in the local Hugging Face cache)
without ever reaching the network or running code from the folder. :func:`encoder_fingerprint`
names what determines a text's vector — the weights and config, the tokenizer files,
``max_length`` and the pooling — so a cache of vectors is reused only with the model that
computed it, wherever that model's folder lives.
"""

from __future__ import annotations

import hashlib
import json
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "encoder_fingerprint",
    "file_sha256",
    "fingerprint_changes",
    "load_encoder",
    "model_folder",
    "saved_vectors_changes",
]

FINGERPRINT_VERSION = 1
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
    }
)
WEIGHT_SUFFIXES = ((".safetensors",), (".bin",), (".h5", ".msgpack"))
"""Weight files by preference, as transformers loads them: safetensors, else torch, else TF/Flax."""
_CHUNK = 1 << 20
_HASHES: dict[tuple[str, int, int, int, int], str] = {}
_HASH_LOCK = threading.Lock()


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


def _is_path_like(name: str) -> bool:
    """Whether ``name`` can only be a filesystem path (never a Hugging Face model name)."""
    path = Path(name).expanduser()
    return path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


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
    elif _is_path_like(name):
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


def model_folder(model_name_or_path: str) -> Path | None:
    """The local folder :func:`load_encoder` would read ``model_name_or_path`` from, or ``None``
    when there is none here (the same rules, without loading anything)."""
    name = str(model_name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        return path if path.is_dir() and (path / "config.json").is_file() else None
    if _is_path_like(name):
        return None
    found = _cached_snapshot(name)
    return Path(found) if found else None


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


# ---------------------------------------------------------------------------- fingerprint
def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks.

    Remembered per (real path, inode, size, mtime, ctime) for the life of the process, so the
    weights of a model are hashed once, not at every load; a file rewritten in place gets a new
    mtime / ctime and is hashed again.
    """
    real = Path(path).resolve()
    st = real.stat()
    key = (str(real), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _HASH_LOCK:
        known = _HASHES.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    with _HASH_LOCK:
        _HASHES[key] = hexdigest
    return hexdigest


def _files_digest(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        digest.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return digest.hexdigest()


def encoder_fingerprint(folder: str | Path, max_length: int, pooling: str) -> dict[str, Any]:
    """What determines the vector of a text, as a JSON-able dict.

    ``model``: sha256 over ``config.json`` and the weight files transformers loads (the
    ``*.safetensors`` files, else ``*.bin``, else TF / Flax files, with their shard indexes);
    ``tokenizer``: sha256 over the tokenizer files (``tokenizer.json``, ``vocab.txt``,
    ``*.model``, …); ``max_length``; ``pooling``; ``id``: a sha256 of all of them. The folder's
    path is not part of it: a copied or moved model keeps its fingerprint, a different model at
    the same path gets another one.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    weights: list[Path] = []
    for suffixes in WEIGHT_SUFFIXES:
        weights = [p for p in files if p.suffix in suffixes or p.name.endswith(".index.json")]
        if any(p.suffix in suffixes for p in weights):
            break
    config = [p for p in files if p.name == "config.json"]
    tokenizer = [p for p in files if p.name in TOKENIZER_FILES or p.suffix == ".model"]
    parts: dict[str, Any] = {
        "version": FINGERPRINT_VERSION,
        "model": _files_digest(config + weights),
        "tokenizer": _files_digest(tokenizer),
        "max_length": int(max_length),
        "pooling": str(pooling),
    }
    parts["id"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return parts


def fingerprint_changes(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words (empty when they are the same).

    ``saved=None`` (vectors saved without a fingerprint) differs from every fingerprint.
    """
    if not saved:
        return ["the saved vectors carry no fingerprint"]
    if saved.get("id") == current.get("id"):
        return []
    words = {"model": "the weights / config", "tokenizer": "the tokenizer files"}
    changes = []
    for key in ("model", "tokenizer", "max_length", "pooling", "version"):
        if saved.get(key) != current.get(key):
            if key in words:
                changes.append(f"{words[key]} differ")
            else:
                changes.append(f"{key} {saved.get(key)!r} → {current.get(key)!r}")
    return changes or ["the fingerprint differs"]


def saved_vectors_changes(
    saved: dict[str, Any], model_name_or_path: str, max_length: int, pooling: str
) -> list[str]:
    """Why vectors saved with ``saved`` (its ``fingerprint``, ``max_length`` and ``pooling``)
    cannot serve a tower with these settings, in words; empty when they can.

    The settings are compared first, then the fingerprint of the model found at
    ``model_name_or_path``. A model that is not here cannot be checked: its vectors are
    trusted until the model is loaded (and checked then).
    """
    changes = [
        f"{key} {saved.get(key)!r} → {value!r}"
        for key, value in (("max_length", max_length), ("pooling", pooling))
        if saved.get(key) != value
    ]
    folder = model_folder(model_name_or_path)
    if changes or folder is None:
        return changes
    current = encoder_fingerprint(folder, max_length, pooling)
    return fingerprint_changes(saved.get("fingerprint"), current)
