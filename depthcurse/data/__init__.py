"""Text corpora for training and evaluation.

- `corpus`: the offline default corpus (Shakespeare's plays and the King James
  Bible), user corpora from files or Hugging Face datasets, and the fixed
  validation split.
"""

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

__all__ = [
    "INSTALL_HINT",
    "VAL_FRACTION",
    "DataError",
    "Document",
    "default_corpus_files",
    "load_default_corpus",
    "load_documents",
    "split_documents",
    "strip_play_markdown",
]
