"""Byte-level BPE tokenizer training and loading, built on Hugging Face `tokenizers`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from depthcurse.data.corpus import DataError, Document
from depthcurse.data.tokens import atomic_write_bytes

EOT_TOKEN = "<|endoftext|>"
# Document separators tried in this order when a loaded tokenizer has no EOT_TOKEN.
SEPARATOR_TOKENS = (EOT_TOKEN, "<|end_of_text|>", "</s>", "<eos>")


def train_tokenizer(
    documents: Iterable[Document],
    vocab_size: int = 4096,
    path: str | os.PathLike[str] | None = None,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer with `<|endoftext|>` as id 0, saved to `path` if given.

    Byte-level BPE never maps text to an unknown token, so decoding an encoding
    gives the text back. The result is the same for the same documents in the
    same order (checked by a test on tokenizers 0.23).
    """
    if vocab_size < 257:
        raise DataError(
            f"vocab_size {vocab_size} is too small: byte-level BPE needs 256 byte tokens plus "
            f"{EOT_TOKEN}; use at least 257"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((doc.text for doc in documents), trainer=trainer)
    if path is not None:
        atomic_write_bytes(Path(path), tokenizer.to_str(pretty=True).encode("utf-8"))
    return tokenizer


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load any `tokenizer.json` that the `tokenizers` library reads, ours or a pretrained model's.

    NOTE: tested only on tokenizers built here, never on a downloaded one such as SmolLM's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for any parse error
        raise DataError(f"{path} is not a valid tokenizer.json file: {err}") from err


def check_vocab(
    tokenizer: Tokenizer, vocab_size: int, path: str | os.PathLike[str] = "tokenizer"
) -> None:
    """Raise DataError when the tokenizer has more token ids than the model's `vocab_size`."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise DataError(
            f"{path} has {size} tokens but the model's vocab_size is {vocab_size}; "
            f"set vocab_size to at least {size} or use a smaller tokenizer"
        )


def separator_id(tokenizer: Tokenizer, path: str | os.PathLike[str] = "tokenizer") -> int:
    """Return the id placed between documents: the first of SEPARATOR_TOKENS the tokenizer has."""
    for token in SEPARATOR_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise DataError(
        f"{path} has none of the document separator tokens {SEPARATOR_TOKENS}; "
        "add one as a special token or use another tokenizer"
    )
