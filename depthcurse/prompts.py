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
