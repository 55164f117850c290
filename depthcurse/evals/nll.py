"""Held-out negative log-likelihood and perplexity with a bootstrap confidence interval.

The point estimate is the token-weighted mean NLL (nats per predicted token)
over all sequences, and perplexity is exp(NLL). The interval is a percentile
bootstrap over sequences: resample whole sequences with replacement, recompute
sum(NLL) / sum(tokens), and take the alpha/2 and 1 - alpha/2 quantiles.
Resampling sequences, not tokens, keeps the correlation between tokens of one
sequence in the interval. The interval of perplexity is exp of the NLL interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from depthcurse.prompts import PromptSet


@dataclass(frozen=True)
class NLLResult:
    """Held-out NLL (nats per token) and perplexity with percentile bootstrap intervals."""

    nll: float
    nll_low: float
    nll_high: float
    perplexity: float
    perplexity_low: float
    perplexity_high: float
    n_sequences: int
    n_tokens: int
    confidence: float
    n_bootstrap: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_logits(
    model: Any, input_ids: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos vocab"]:
    """Run `model` on token ids and return its logits.

    Works for `DepthcurseLM`, a TransformerLens `TransformerBridge` (called with
    `return_type="logits"`), a transformers causal LM (output with `.logits`) and
    any callable returning logits. Inputs
    are right padded, so no attention mask is passed: under causal attention a
    real token never attends to the padding after it.
    """
    if _accepts_return_type(model):
        output = model(input_ids, return_type="logits")
    else:
        output = model(input_ids)
    logits = getattr(output, "logits", output)
    if not isinstance(logits, Tensor) or logits.ndim != 3:
        raise TypeError(
            f"model returned {type(output).__name__}, expected logits of shape (batch, pos, vocab)"
        )
    return logits


def _accepts_return_type(model: Any) -> bool:
    return type(model).__name__ == "TransformerBridge" or hasattr(model, "run_with_cache")


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def _windows_from_flat(tokens: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """Split a 1-D token array into non-overlapping windows of seq_len + 1 tokens.

    Window i contains tokens [i * seq_len, (i + 1) * seq_len]; consecutive windows
    share one token, so every token after the first is predicted exactly once.
    A last window shorter than seq_len + 1 is dropped.
    """
    count = (len(tokens) - 1) // seq_len
    if count == 0:
        raise ValueError(
            f"{len(tokens)} tokens are too few for one window of seq_len={seq_len}; "
            "pass more tokens or a smaller seq_len"
        )
    return [np.asarray(tokens[i * seq_len : (i + 1) * seq_len + 1]) for i in range(count)]


def token_sequences(tokens: Any, seq_len: int | None = None) -> list[list[int]]:
    """Turn a token set into a list of sequences (lists of ids).

    Accepted: a 2-D tensor or array (one sequence per row), a 1-D tensor or
    array or a `TokenStore` (split into windows of `seq_len` + 1 tokens), or a
    `PromptSet` (one sequence per prompt, padding excluded).
    """
    if isinstance(tokens, PromptSet):
        return [list(prompt.token_ids) for prompt in tokens.prompts]
    if hasattr(tokens, "tokens") and not isinstance(tokens, Tensor | np.ndarray):
        tokens = tokens.tokens  # a TokenStore: a numpy memory map of ids
    if isinstance(tokens, Tensor):
        tokens = tokens.detach().cpu().numpy()
    array = np.asarray(tokens)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"token ids must be integers, got dtype {array.dtype}")
    if array.ndim == 2:
        return [row.tolist() for row in array]
    if array.ndim == 1:
        if seq_len is None:
            raise ValueError("a 1-D token array needs seq_len to split it into sequences")
        return [window.tolist() for window in _windows_from_flat(array, seq_len)]
    raise ValueError(f"token ids must be 1-D or 2-D, got shape {array.shape}")


def _batches(sequences: list[list[int]], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(seq) for seq in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = True
        yield ids, mask


@torch.no_grad()
def sequence_nll(
    model: Any, tokens: Any, *, seq_len: int | None = None, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Return per-sequence summed NLL (nats, float64) and predicted-token counts.

    Token t of a sequence is scored by the logits at position t - 1, so a
    sequence of n tokens contributes n - 1 predictions. Logits are upcast to
    float32 before the log-softmax.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    sequences = token_sequences(tokens, seq_len)
    short = [i for i, seq in enumerate(sequences) if len(seq) < 2]
    if short:
        raise ValueError(f"sequence {short[0]} has fewer than 2 tokens, so nothing is predicted")
    device = _model_device(model)
    sums, counts = [], []
    for ids, mask in _batches(sequences, batch_size):
        logits = model_logits(model, ids.to(device)).float()
        targets = ids[:, 1:].to(logits.device)
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        ).view(targets.shape)
        valid = mask[:, 1:].to(logits.device)
        sums.append((nll.double() * valid).sum(dim=1).cpu().numpy())
        counts.append(valid.sum(dim=1).cpu().numpy())
    return np.concatenate(sums), np.concatenate(counts).astype(np.int64)


def bootstrap_ratio(
    numerators: np.ndarray,
    denominators: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Return sum(num) / sum(den) and its percentile bootstrap interval over items."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap <= 0:
        raise ValueError(f"n_bootstrap must be positive, got {n_bootstrap}")
    numerators = np.asarray(numerators, dtype=np.float64)
    denominators = np.asarray(denominators, dtype=np.float64)
    point = float(numerators.sum() / denominators.sum())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(numerators), size=(n_bootstrap, len(numerators)))
    ratios = numerators[picks].sum(axis=1) / denominators[picks].sum(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return point, float(low), float(high)


def heldout_nll(
    model: Any,
    tokens: Any,
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> NLLResult:
    """Measure held-out NLL and perplexity of `model` on a token set.

    `tokens` is a 2-D tensor or array of sequences, a 1-D tensor or array or a
    `TokenStore` (split into non-overlapping windows of `seq_len` + 1 tokens),
    or a `PromptSet`. `model` is a `DepthcurseLM`, a `TransformerBridge`, a
    transformers causal LM or any callable returning (batch, pos, vocab) logits.
    The bootstrap is seeded by `seed`, so the interval is reproducible.
    """
    sums, counts = sequence_nll(model, tokens, seq_len=seq_len, batch_size=batch_size)
    nll, low, high = bootstrap_ratio(
        sums, counts, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed
    )
    return NLLResult(
        nll=nll,
        nll_low=low,
        nll_high=high,
        perplexity=math.exp(nll),
        perplexity_low=math.exp(low),
        perplexity_high=math.exp(high),
        n_sequences=len(sums),
        n_tokens=int(counts.sum()),
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
