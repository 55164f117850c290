"""Prompt sets cut from token files and from the corpus's validation split."""

import json

import numpy as np
import pytest

from depthcurse.data import Document, split_documents, train_tokenizer, write_tokens
from depthcurse.data.corpus import load_documents
from depthcurse.prompts import prompts_from_tokens, validation_prompts


def test_prompts_from_token_file(tmp_path):
    ids = np.arange(1000) % 500
    write_tokens(tmp_path / "val.bin", ids, vocab_size=500)
    prompts = prompts_from_tokens(tmp_path / "val.bin", 4, 16, name="val")
    assert len(prompts) == 4
    starts = [p.labels["start"] for p in prompts.prompts]
    assert starts == [0, 250, 500, 750]
    for prompt, start in zip(prompts.prompts, starts, strict=True):
        assert prompt.token_ids == ids[start : start + 16].tolist()
    assert prompts.prepend_bos is False


def test_prompts_from_short_file_rejected(tmp_path):
    write_tokens(tmp_path / "val.bin", np.arange(50), vocab_size=500)
    with pytest.raises(ValueError, match="fewer than 4 prompts x 16 tokens"):
        prompts_from_tokens(tmp_path / "val.bin", 4, 16)


@pytest.fixture
def jsonl_corpus(tmp_path):
    words = "to be or not that is the question whether tis nobler in the mind".split()
    lines = [
        {"text": " ".join(words[(i + j) % len(words)] for j in range(400))} for i in range(40)
    ]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_validation_prompts_from_val_split(jsonl_corpus):
    documents = load_documents(str(jsonl_corpus))
    train, val = split_documents(documents)
    tokenizer = train_tokenizer(train, vocab_size=300)
    prompts = validation_prompts(tokenizer, 6, 32, source=str(jsonl_corpus))
    val_names = {document.name for document in val}
    assert len(prompts) == 6
    assert {p.labels["document"] for p in prompts.prompts} <= val_names
    assert all(len(p.token_ids) == 32 for p in prompts.prompts)
    # Windows are taken from the documents in turn, so the first prompts come
    # from different documents.
    first = [p.labels["document"] for p in prompts.prompts[: len(val)]]
    assert len(set(first)) == min(len(val), 6)
    # Each prompt is the tokenization of its document at its start token.
    texts = {document.name: document.text for document in val}
    prompt = prompts.prompts[0]
    ids = tokenizer.encode(texts[prompt.labels["document"]], add_special_tokens=False).ids
    start = prompt.labels["start"]
    assert prompt.token_ids == ids[start : start + 32]


def test_validation_prompts_too_many(jsonl_corpus):
    tokenizer = train_tokenizer([Document("d", "to be or not")], vocab_size=300)
    with pytest.raises(ValueError, match="fewer than n_prompts=10000"):
        validation_prompts(tokenizer, 10000, 32, source=str(jsonl_corpus))
