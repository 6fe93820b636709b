"""Keyed hashing of ids: secret-keyed hash buckets, anonymised vocabularies and key checks.

With a secret key, ids are hashed with keyed BLAKE2b (``hashlib.blake2b(value, key=key)``), a
pseudo-random function: without the key nobody can recompute which bucket or token an id has,
so hashed ids cannot be reversed by trying candidate ids. A value is hashed as its UTF-8 text
(``str(value)``: the decimal digits of an int id, the characters of a str id).

The key itself is never written anywhere; ``schema.json`` holds only :func:`key_check`, a keyed
digest of a fixed string, so that loading with a wrong key fails loudly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import pandas as pd

BUCKET_DIGEST = 8
"""Bytes of the keyed digest of a hash bucket (reduced modulo the number of buckets)."""
TOKEN_DIGEST = 16
"""Bytes of an anonymised vocabulary token (written as ``2 * TOKEN_DIGEST`` hex digits)."""
_CHECK_MESSAGE = b"recsys_mt key check v1"
MAX_KEY_BYTES = hashlib.blake2b.MAX_KEY_SIZE  # 64

Key = bytes | str


def normalize_key(key: Key, what: str) -> bytes:
    """``key`` as bytes (a str is UTF-8 encoded); raises ``ValueError`` naming ``what``."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"{what}: hash_key must be bytes or str, got {type(key).__name__}")
    if not 1 <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"{what}: hash_key must hold 1 to {MAX_KEY_BYTES} bytes, got {len(key)} "
            "(use e.g. secrets.token_bytes(32))"
        )
    return bytes(key)


def key_check(key: bytes) -> str:
    """A short keyed digest of a fixed string: tells a wrong key apart, reveals nothing of it."""
    return hashlib.blake2b(_CHECK_MESSAGE, key=key, digest_size=8).hexdigest()


def _value_bytes(value: object) -> bytes:
    return str(value).encode("utf-8", "surrogatepass")


def _per_unique(values: np.ndarray, fn, dtype) -> np.ndarray:
    """``fn`` of each distinct value of ``values`` (computed once per distinct value)."""
    codes, uniques = pd.factorize(values, sort=False)
    out = np.fromiter((fn(_value_bytes(v)) for v in uniques), dtype=dtype, count=len(uniques))
    return out[codes]


def keyed_buckets(values: np.ndarray, key: bytes, buckets: int) -> np.ndarray:
    """Bucket ``0 .. buckets - 1`` (uint64) of each value: keyed BLAKE2b modulo ``buckets``."""

    def digest(b: bytes) -> int:
        h = hashlib.blake2b(b, key=key, digest_size=BUCKET_DIGEST).digest()
        return int.from_bytes(h, "little")

    return _per_unique(values, digest, np.uint64) % np.uint64(buckets)


def anonymize(values: np.ndarray, key: bytes) -> np.ndarray:
    """Anonymised tokens (hex str objects) of the values: keyed BLAKE2b, ``TOKEN_DIGEST`` bytes."""

    def token(b: bytes) -> str:
        return hashlib.blake2b(b, key=key, digest_size=TOKEN_DIGEST).hexdigest()

    return _per_unique(values, token, object)


def is_token(value: object) -> bool:
    """Whether ``value`` looks like an anonymised token (lower-case hex of the right length)."""
    if not isinstance(value, str) or len(value) != 2 * TOKEN_DIGEST:
        return False
    return all(c in "0123456789abcdef" for c in value)


def resolve_keys(keys: Mapping[str, Key] | Key | None, keyed: list[str]) -> dict[str, bytes]:
    """Map each feature name of ``keyed`` to its key from ``keys`` (a mapping, or one key for
    them all). Raises ``ValueError`` for names of ``keys`` that no keyed feature has."""
    if keys is None:
        return {}
    if isinstance(keys, (bytes, bytearray, str)):
        if not keyed:
            raise ValueError("a hash key was given but no feature of this schema uses hash_key")
        return {name: normalize_key(keys, f"key of {name!r}") for name in keyed}
    if not isinstance(keys, Mapping):
        raise TypeError(f"keys must be a dict {{feature: key}} or one key, got {type(keys)}")
    unknown = sorted(str(k) for k in keys if k not in keyed)
    if unknown:
        raise ValueError(
            f"keys given for feature(s) {unknown} that use no hash_key; features with a "
            f"hash_key: {keyed}"
        )
    return {name: normalize_key(k, f"key of {name!r}") for name, k in keys.items()}
