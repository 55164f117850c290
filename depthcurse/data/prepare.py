"""Prepared data folders: `tokenizer.json`, `train.bin`, `val.bin` and `meta.json`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from depthcurse.data.corpus import (
    Document,
    corpus_files,
    default_corpus_files,
    is_saved_dataset,
    load_default_corpus,
    load_documents,
    split_documents,
)
from depthcurse.data.tokenizer import check_vocab, load_tokenizer, separator_id, train_tokenizer
from depthcurse.data.tokens import TokenStore, atomic_write_bytes, open_tokens, write_tokens

logger = logging.getLogger(__name__)

# Bump when the corpus cleaning or the folder layout changes, so that
# prepare_data rebuilds folders written by older code instead of reusing them.
PREPARE_VERSION = 1


TOKENIZER_FILE = "tokenizer.json"
TRAIN_FILE = "train.bin"
VAL_FILE = "val.bin"
META_FILE = "meta.json"


@dataclass(frozen=True)
class PreparedData:
    """A folder with a tokenizer, train and validation token files, and their metadata."""

    out_dir: Path
    tokenizer_path: Path
    train_path: Path
    val_path: Path
    meta_path: Path
    meta: dict[str, Any] = field(repr=False)
    reused: bool = False
    """True when prepare_data found a matching folder and built nothing."""

    def open(self, split: str) -> TokenStore:
        """Open the token file of `split`, "train" or "val"."""
        paths = {"train": self.train_path, "val": self.val_path}
        if split not in paths:
            raise ValueError(f"split {split!r} is invalid; use 'train' or 'val'")
        return open_tokens(paths[split])


def _hash_files(files: list[tuple[str, Path]]) -> str:
    hasher = hashlib.sha256()
    for name, path in files:
        hasher.update(f"{name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                hasher.update(block)
    return hasher.hexdigest()


def _hash_documents(documents: list[Document]) -> str:
    hasher = hashlib.sha256()
    for doc in documents:
        hasher.update(f"{doc.name}\0{len(doc.text)}\0{doc.text}".encode())
    return hasher.hexdigest()


def _local_source_files(source: str | os.PathLike[str] | None) -> list[tuple[str, Path]] | None:
    """List the files a corpus is read from, or return None for a hub dataset."""
    if source is None:
        return [(f"{path.parent.name}/{path.name}", path) for path in default_corpus_files()]
    path = Path(source).expanduser()
    if path.is_file():
        return [(path.name, path)]
    if path.is_dir():
        files = (
            sorted(p for p in path.rglob("*") if p.is_file())
            if is_saved_dataset(path)
            else corpus_files(path)
        )
        return [(str(file.relative_to(path)), file) for file in files]
    return None


def _matches(meta_path: Path, expected: dict[str, Any], out_dir: Path) -> bool:
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
        if any(meta.get(key) != value for key, value in expected.items()):
            return False
        tokens = meta["tokens"]
        return (
            (out_dir / TOKENIZER_FILE).is_file()
            and len(open_tokens(out_dir / TRAIN_FILE)) == tokens["train"]
            and len(open_tokens(out_dir / VAL_FILE)) == tokens["val"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _encode_documents(
    tokenizer: Tokenizer, documents: list[Document], separator: int, chunk_size: int = 256
) -> Iterator[np.ndarray]:
    for first in range(0, len(documents), chunk_size):
        batch = documents[first : first + chunk_size]
        # encode_batch_fast skips the character offsets. On the default corpus it took
        # 3.0 s against 8.6 s for encode_batch (2 shared CPU cores, tokenizers 0.23).
        texts = [doc.text for doc in batch]
        encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        parts = []
        for offset, encoding in enumerate(encodings):
            if first + offset > 0:
                parts.append(np.array([separator], dtype=np.int64))
            parts.append(np.asarray(encoding.ids, dtype=np.int64))
        yield np.concatenate(parts)


def prepare_data(
    out_dir: str | os.PathLike[str],
    source: str | os.PathLike[str] | None = None,
    vocab_size: int = 4096,
    tokenizer_path: str | os.PathLike[str] | None = None,
    text_field: str = "text",
) -> PreparedData:
    """Tokenize a corpus into `out_dir`, or reuse the folder when it already matches.

    `source=None` selects the default corpus, anything else goes to
    `load_documents`. Without `tokenizer_path`, a byte-level BPE tokenizer with
    `vocab_size` tokens is trained on the train split. With it, that tokenizer is
    copied into the folder and must fit `vocab_size`.

    The folder is reused when `meta.json` records the same content hash, vocab
    size, text field and tokenizer, and the token files have the recorded
    lengths. The content hash is the SHA-256 of the source files, or of the
    loaded text for a hub dataset, so checking a local corpus does not parse it.
    Call it from one process only, and let other ranks open the files afterwards,
    because two processes rebuilding one folder would replace each other's files.
    """
    out_dir = Path(out_dir)
    paths = PreparedData(
        out_dir,
        out_dir / TOKENIZER_FILE,
        out_dir / TRAIN_FILE,
        out_dir / VAL_FILE,
        out_dir / META_FILE,
        meta={},
    )

    documents = None
    files = _local_source_files(source)
    if files is not None:
        content_hash = _hash_files(files)
    else:
        documents = load_documents(source, text_field)
        content_hash = _hash_documents(documents)

    tokenizer = None
    tokenizer_hash = None
    if tokenizer_path is not None:
        tokenizer = load_tokenizer(tokenizer_path)
        check_vocab(tokenizer, vocab_size, tokenizer_path)
        separator_id(tokenizer, tokenizer_path)  # raises before any work if it has none
        tokenizer_hash = _hash_files([(TOKENIZER_FILE, Path(tokenizer_path))])
    expected = {
        "prepare_version": PREPARE_VERSION,
        "content_hash": content_hash,
        "text_field": None if source is None else text_field,
        "vocab_size": vocab_size,
        "tokenizer_hash": tokenizer_hash,
    }

    if _matches(paths.meta_path, expected, out_dir):
        logger.info("reusing prepared data in %s", out_dir)
        meta = json.loads(paths.meta_path.read_text("utf-8"))
        return dataclasses.replace(paths, meta=meta, reused=True)

    # Remove the old meta first: a crash mid-rebuild must not leave it describing new files.
    paths.meta_path.unlink(missing_ok=True)
    logger.info("preparing data in %s from %s", out_dir, source or "the default corpus")
    if documents is None:
        documents = load_default_corpus() if source is None else load_documents(source, text_field)

    train_docs, val_docs = split_documents(documents)
    if tokenizer is None:
        tokenizer = train_tokenizer(train_docs, vocab_size, paths.tokenizer_path)
    else:
        atomic_write_bytes(paths.tokenizer_path, Path(tokenizer_path).read_bytes())
    separator = separator_id(tokenizer, tokenizer_path or paths.tokenizer_path)

    train_tokens = write_tokens(
        paths.train_path, _encode_documents(tokenizer, train_docs, separator), vocab_size
    )
    val_tokens = write_tokens(
        paths.val_path, _encode_documents(tokenizer, val_docs, separator), vocab_size
    )

    meta = {
        **expected,
        "source": "default corpus" if source is None else str(source),
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "tokens": {"train": train_tokens, "val": val_tokens},
        "characters": {
            "train": sum(len(doc.text) for doc in train_docs),
            "val": sum(len(doc.text) for doc in val_docs),
        },
        "tokenizer_vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "separator_id": separator,
        "val_documents": [doc.name for doc in val_docs],
    }
    atomic_write_bytes(paths.meta_path, json.dumps(meta, indent=2).encode("utf-8"))
    logger.info("wrote %d train and %d val tokens to %s", train_tokens, val_tokens, out_dir)
    return dataclasses.replace(paths, meta=meta)
