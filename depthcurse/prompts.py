"""Prompt datasets: named prompts as token ids, batched with right padding.

Right padding keeps every real token at its own position (0..n-1), so a padded
batch gives the same per-example activations as one-by-one runs. No BOS token
is added unless the caller asks; the choice is stored on the set and reported
with every result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor


@dataclass
class Prompt:
    """One prompt: a name, its token ids, and optional labels (task, level, answer...)."""

    name: str
    token_ids: list[int]
    labels: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptSet:
    """A named collection of prompts sharing one tokenizer."""

    name: str
    prompts: list[Prompt]
    prepend_bos: bool = False
    pad_id: int = 0

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError(f"prompt set {self.name!r} is empty; give it at least one prompt")
        for prompt in self.prompts:
            if not prompt.token_ids:
                raise ValueError(f"prompt {prompt.name!r} in set {self.name!r} has no tokens")

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_texts(
        cls,
        name: str,
        texts: Sequence[str],
        tokenizer: Any,
        *,
        prepend_bos: bool = False,
        max_tokens: int | None = None,
        labels: Sequence[dict[str, Any]] | None = None,
    ) -> PromptSet:
        """Tokenize `texts` with a transformers or `tokenizers` tokenizer (no special tokens added)."""
        prompts = []
        for index, text in enumerate(texts):
            ids = encode(tokenizer, text)
            if prepend_bos:
                ids = [bos_id(tokenizer), *ids]
            if max_tokens is not None:
                ids = ids[:max_tokens]
            prompts.append(Prompt(f"{name}-{index}", ids, dict(labels[index]) if labels else {}))
        return cls(name, prompts, prepend_bos=prepend_bos, pad_id=pad_id(tokenizer))

    def select(self, **labels: Any) -> PromptSet:
        """Return the prompts whose labels match all of `labels`."""
        chosen = [p for p in self.prompts if all(p.labels.get(k) == v for k, v in labels.items())]
        suffix = ",".join(f"{k}={v}" for k, v in labels.items())
        return PromptSet(f"{self.name}[{suffix}]", chosen, self.prepend_bos, self.pad_id)

    def batches(
        self, batch_size: int
    ) -> Iterator[tuple[list[Prompt], Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]]:
        """Yield (prompts, token ids, attention mask) with right padding, in order."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, len(self.prompts), batch_size):
            chunk = self.prompts[start : start + batch_size]
            width = max(len(p.token_ids) for p in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, prompt in enumerate(chunk):
                ids[row, : len(prompt.token_ids)] = torch.tensor(prompt.token_ids)
                mask[row, : len(prompt.token_ids)] = 1
            yield chunk, ids, mask


def encode(tokenizer: Any, text: str) -> list[int]:
    """Encode `text` without adding special tokens, for either tokenizer library."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "get_vocab_size"):  # tokenizers.Tokenizer
        return list(tokenizer.encode(text, add_special_tokens=False).ids)
    return list(tokenizer.encode(text, add_special_tokens=False))


def bos_id(tokenizer: Any) -> int:
    token_id = getattr(tokenizer, "bos_token_id", None)
    if token_id is None and hasattr(tokenizer, "token_to_id"):
        token_id = tokenizer.token_to_id("<|endoftext|>")
    if token_id is None:
        raise ValueError("prepend_bos=True but the tokenizer has no BOS token; pass prepend_bos=False")
    return int(token_id)


def pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        token_id = getattr(tokenizer, attr, None)
        if token_id is not None:
            return int(token_id)
    if hasattr(tokenizer, "token_to_id") and tokenizer.token_to_id("<|endoftext|>") is not None:
        return int(tokenizer.token_to_id("<|endoftext|>"))
    return 0


def prompts_from_tokens(
    tokens: Any,
    n_prompts: int,
    n_tokens: int,
    *,
    name: str = "tokens",
    pad_id: int = 0,
) -> PromptSet:
    """Cut `n_prompts` evenly spaced, non-overlapping windows of `n_tokens` from a token file.

    `tokens` is a path to a token file (such as a prepared folder's `val.bin`),
    a `TokenStore` or a `PreparedData` (its validation split is used). Windows
    may span a document separator, as training batches do. The ids must come
    from the tokenizer of the model the prompts are for.
    """
    from depthcurse.data import PreparedData, TokenStore, open_tokens

    if isinstance(tokens, PreparedData):
        tokens = tokens.open("val")
    elif not isinstance(tokens, TokenStore):
        tokens = open_tokens(tokens)
    _check_counts(n_prompts, n_tokens)
    if n_prompts * n_tokens > len(tokens):
        raise ValueError(
            f"{tokens.path} has {len(tokens)} tokens, fewer than {n_prompts} prompts x "
            f"{n_tokens} tokens; ask for fewer or shorter prompts"
        )
    stride = len(tokens) // n_prompts
    prompts = [
        Prompt(f"{name}-{start}", tokens.tokens[start : start + n_tokens].tolist(), {"start": start})
        for start in range(0, stride * n_prompts, stride)
    ]
    return PromptSet(name, prompts, prepend_bos=False, pad_id=pad_id)


def validation_prompts(
    tokenizer: Any,
    n_prompts: int = 20,
    n_tokens: int = 256,
    *,
    source: str | None = None,
    prepend_bos: bool = False,
) -> PromptSet:
    """Build prompts from the validation split of the default corpus (or of `source`).

    The split is the one `depthcurse.data.split_documents` makes for training,
    so a model trained by depthcurse on that corpus never saw these texts.
    Each validation document is tokenized with `tokenizer` (a transformers or
    `tokenizers` tokenizer, e.g. a public model's own), cut into consecutive
    windows of `n_tokens` (including BOS when `prepend_bos`), and windows are
    taken from the documents in turn so that the prompts cover all of them.
    Labels record each prompt's document and start token.
    """
    from depthcurse.data import load_default_corpus, load_documents, split_documents

    _check_counts(n_prompts, n_tokens)
    documents = load_default_corpus() if source is None else load_documents(source)
    _, val_documents = split_documents(documents)
    body = n_tokens - 1 if prepend_bos else n_tokens
    bos = [bos_id(tokenizer)] if prepend_bos else []
    windows: list[list[Prompt]] = []
    for document in val_documents:
        ids = encode(tokenizer, document.text)
        windows.append(
            [
                Prompt(
                    f"val-{document.name}-{start}",
                    bos + ids[start : start + body],
                    {"document": document.name, "start": start},
                )
                for start in range(0, len(ids) - body + 1, body)
            ]
        )
    prompts: list[Prompt] = []
    for round_index in range(max((len(w) for w in windows), default=0)):
        prompts += [w[round_index] for w in windows if round_index < len(w)]
    if len(prompts) < n_prompts:
        raise ValueError(
            f"the validation split contains only {len(prompts)} windows of {n_tokens} tokens, "
            f"fewer than n_prompts={n_prompts}; ask for fewer or shorter prompts"
        )
    return PromptSet(
        "validation", prompts[:n_prompts], prepend_bos=prepend_bos, pad_id=pad_id(tokenizer)
    )


def _check_counts(n_prompts: int, n_tokens: int) -> None:
    if n_prompts <= 0 or n_tokens <= 0:
        raise ValueError(
            f"n_prompts ({n_prompts}) and n_tokens ({n_tokens}) must both be positive"
        )
