"""Token files: a 32-byte header, then the token ids, read through a memory map.

The header contains the magic bytes `DCTOKENS`, the format version, the bytes per
token, the token count and the vocab size. Ids are little-endian uint16 when
vocab_size <= 65536 and uint32 otherwise. A memory map costs no RAM for the ids,
so a corpus larger than memory trains the same way.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from depthcurse.data.corpus import DataError

# magic, format version, bytes per token, token count, vocab size: 32 bytes.
_HEADER = struct.Struct("<8sIIQQ")
_MAGIC = b"DCTOKENS"
_TOKENS_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    """Return the smallest dtype for ids below `vocab_size`: uint16 or uint32."""
    if not 0 < vocab_size <= 2**32:
        raise DataError(f"vocab_size {vocab_size} is outside the supported range 1..2**32")
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary sibling, fsync it and rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_tokens(
    path: str | os.PathLike[str], ids: np.ndarray | Iterable[Any], vocab_size: int
) -> int:
    """Write token ids to a token file atomically and return the number of tokens.

    `ids` is a 1-D array or list of ids, or an iterator of 1-D arrays (chunks),
    so a corpus can be written without holding all of it in memory. The file is
    written under a temporary name, fsynced and renamed, so `path` is never
    half written.
    """
    path = Path(path)
    dtype = token_dtype(vocab_size)
    chunks = [ids] if isinstance(ids, np.ndarray | list | tuple) else ids
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    count = 0
    try:
        with open(tmp, "wb") as handle:
            handle.write(b"\0" * _HEADER.size)
            for chunk in chunks:
                array = np.asarray(chunk)
                if array.size == 0:
                    continue
                if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                    raise DataError(
                        f"token ids for {path} must be 1-D integers, got {array.dtype} "
                        f"with shape {array.shape}"
                    )
                if array.min() < 0 or array.max() >= vocab_size:
                    bad = array.min() if array.min() < 0 else array.max()
                    raise DataError(
                        f"token id {int(bad)} for {path} is outside 0..{vocab_size - 1}; "
                        "the tokenizer does not fit vocab_size"
                    )
                handle.write(array.astype(dtype, copy=False).tobytes())
                count += array.size
            handle.seek(0)
            handle.write(_HEADER.pack(_MAGIC, _TOKENS_VERSION, dtype.itemsize, count, vocab_size))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return count


@dataclass(frozen=True)
class TokenStore:
    """A read-only token file: `tokens` is a numpy memory map of its ids."""

    path: Path
    tokens: np.ndarray
    vocab_size: int

    def __len__(self) -> int:
        return len(self.tokens)


def open_tokens(path: str | os.PathLike[str]) -> TokenStore:
    """Open a token file written by `write_tokens`, checking its header and size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} not found; run prepare_data first")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(_HEADER.size)

    if len(header) < _HEADER.size:
        raise DataError(f"{path} is truncated: {size} bytes is shorter than the header; rebuild it")
    magic, version, itemsize, count, vocab_size = _HEADER.unpack(header)
    if magic != _MAGIC:
        raise DataError(f"{path} is not a depthcurse token file (magic bytes {magic!r})")
    if version != _TOKENS_VERSION:
        raise DataError(
            f"{path} has token format version {version}, expected {_TOKENS_VERSION}; rebuild it"
        )
    if not 0 < vocab_size <= 2**32:
        raise DataError(f"{path} has an invalid vocab_size {vocab_size} in its header; rebuild it")

    dtype = token_dtype(vocab_size)
    if itemsize != dtype.itemsize:
        raise DataError(
            f"{path} stores {itemsize}-byte ids, but vocab_size {vocab_size} needs {dtype}"
        )
    expected = _HEADER.size + count * itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise DataError(f"{path} is {state}: {size} bytes, expected {expected}; rebuild it")

    if count == 0:
        tokens = np.zeros(0, dtype)
    else:
        tokens = np.memmap(path, dtype=dtype, mode="r", offset=_HEADER.size, shape=(count,))
    return TokenStore(path, tokens, vocab_size)


def require_tokens(store: TokenStore, seq_len: int) -> None:
    """Raise DataError unless the store contains one window of `seq_len` + 1 tokens."""
    if len(store) < seq_len + 1:
        raise DataError(
            f"{store.path} has {len(store)} tokens, fewer than the {seq_len + 1} that one window "
            f"of seq_len={seq_len} needs; use a larger corpus or a shorter seq_len"
        )
