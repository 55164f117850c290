"""Text corpora, the byte-level BPE tokenizer, token files and batch samplers.

- `corpus`: the offline default corpus (Shakespeare's plays and the King James
  Bible), user corpora from files or Hugging Face datasets, and the fixed
  validation split.
- `tokenizer`: training and loading `tokenizer.json` files.
- `tokens`: memory-mapped token files.
- `prepare`: `prepare_data`, which turns a corpus into a folder with
  `tokenizer.json`, `train.bin`, `val.bin` and `meta.json`, and reuses it later.
- `batches`: the resumable training sampler and the evaluation batches.
"""

from depthcurse.data.batches import BatchSampler, eval_batches
from depthcurse.data.corpus import (
    INSTALL_HINT,
    VAL_FRACTION,
    DataError,
    Document,
    default_corpus_files,
    load_default_corpus,
    load_documents,
    split_documents,
    strip_play_markdown,
)
from depthcurse.data.prepare import PreparedData, prepare_data
from depthcurse.data.tokenizer import (
    EOT_TOKEN,
    check_vocab,
    load_tokenizer,
    separator_id,
    train_tokenizer,
)
from depthcurse.data.tokens import TokenStore, open_tokens, require_tokens, write_tokens

__all__ = [
    "EOT_TOKEN",
    "INSTALL_HINT",
    "VAL_FRACTION",
    "BatchSampler",
    "DataError",
    "Document",
    "PreparedData",
    "TokenStore",
    "check_vocab",
    "default_corpus_files",
    "eval_batches",
    "load_default_corpus",
    "load_documents",
    "load_tokenizer",
    "open_tokens",
    "prepare_data",
    "require_tokens",
    "separator_id",
    "split_documents",
    "strip_play_markdown",
    "train_tokenizer",
    "write_tokens",
]
