"""Cooldown data mix: generated reasoning-primitive text blended with the default corpus.

Kapl et al. 2025 (arXiv 2512.08819) report depth-grown models gaining most
from a math-heavy cooldown mixture. Here the cooldown phase draws each batch
row from the default corpus or from a token store of solved reasoning
primitives (`primitives.training_documents`), by weights.

`MixtureSampler` has the interface of `depthcurse.data.BatchSampler`
(`batch(index)`, `next_batch()`, iteration, `state_dict()`,
`load_state_dict()`), and batch k depends only on (seed, k) and the base
sampler's batch k. Which rows come from which source is set by systematic
sampling: with weights w and global batch size B (batch_size * world_size),
source s gets floor(w_s * B) or ceil(w_s * B) rows, so every batch is within one
row of the weights. As in `BatchSampler`, the draws cover the global batch and
rank r keeps rows [r * batch_size, (r + 1) * batch_size), so ranks never
duplicate a generated window.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from depthcurse.evals.primitives import training_documents
from depthcurse.prompts import encode

# Mixed into the per-batch random seed, so the mixture's draws never reuse the base sampler's.
_MIX_STREAM = 0x6D6978


def encode_documents(
    documents: Iterable[str], tokenizer: Any, separator_id: int
) -> np.ndarray:
    """Encode documents into one 1-D int64 array, `separator_id` before each document."""
    pieces = []
    for text in documents:
        pieces.append([separator_id])
        pieces.append(encode(tokenizer, text))
    if not pieces:
        raise ValueError("no documents to encode")
    return np.fromiter((i for piece in pieces for i in piece), dtype=np.int64)


def primitive_tokens(
    tokenizer: Any,
    separator_id: int,
    n_documents: int = 2000,
    *,
    seed: int = 0,
    **generator_args: Any,
) -> np.ndarray:
    """Generate reasoning-primitive training documents and return them as one token array.

    Write the array to a token file with `depthcurse.data.write_tokens` to open
    it as a `TokenStore`, or pass it to `MixtureSampler` directly.
    """
    documents = training_documents(n_documents, seed=seed, **generator_args)
    return encode_documents(documents, tokenizer, separator_id)


def _flat_tokens(source: Any) -> np.ndarray:
    tokens = getattr(source, "tokens", source)
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.cpu().numpy()
    array = np.asarray(tokens)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"a mixture source must be a TokenStore or a 1-D integer array, got {array.dtype} "
            f"with shape {array.shape}"
        )
    return array


class MixtureSampler:
    """Batches whose rows come from a base `BatchSampler` or from extra token stores, by weight.

    `base` is the default-corpus sampler (named `base_name` in `weights`);
    `sources` maps a name to a `TokenStore` or 1-D token array; `weights` maps
    every source name, `base_name` included, to a non-negative weight (they
    are normalized). Batch k takes the base sampler's batch k and replaces the
    rows given to other sources with random windows of those sources, drawn
    from `numpy.random.default_rng([seed, k, ...])`. The batch counter starts
    at the base sampler's own counter, so a trainer that switches from the base
    sampler to the mixture mid-run continues the base batch sequence.
    """

    def __init__(
        self,
        base: Any,
        sources: dict[str, Any],
        weights: dict[str, float],
        *,
        seed: int | None = None,
        base_name: str = "corpus",
    ) -> None:
        if base_name in sources:
            raise ValueError(f"source name {base_name!r} is reserved for the base sampler")
        names = [base_name, *sources]
        if set(weights) != set(names):
            raise ValueError(
                f"weights name {sorted(weights)}, but the sources are {sorted(names)}; "
                "give one weight per source, the base sampler included"
            )
        for name, weight in weights.items():
            if not np.isfinite(weight) or weight < 0:
                raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {weight!r}")
        total = float(sum(weights.values()))
        if total <= 0:
            raise ValueError(f"weights {weights} sum to 0; give at least one source a positive weight")
        self.base = base
        self.base_name = base_name
        self.batch_size = int(base.batch_size)
        self.seq_len = int(base.seq_len)
        self.rank = int(getattr(base, "rank", 0))
        self.world_size = int(getattr(base, "world_size", 1))
        self.seed = int(base.seed if seed is None else seed)
        self.names = names
        self.weights = {name: float(weights[name]) / total for name in names}
        self.sources = {name: _flat_tokens(store) for name, store in sources.items()}
        for name, tokens in self.sources.items():
            if len(tokens) < self.seq_len + 1:
                raise ValueError(
                    f"source {name!r} has {len(tokens)} tokens, fewer than the {self.seq_len + 1} "
                    f"that one window of seq_len={self.seq_len} needs; generate more documents"
                )
        self.batches_drawn = int(getattr(base, "batches_drawn", 0))

    def row_sources(self, index: int) -> list[str]:
        """Return the source name of each of this rank's rows of batch `index`."""
        return [self.names[i] for i in self._global_sources(index)[self._rows()]]

    def _rows(self) -> slice:
        return slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)

    def _global_sources(self, index: int) -> np.ndarray:
        """Return the source index of every row of the global batch `index`."""
        rng = np.random.default_rng([self.seed, index, _MIX_STREAM])
        rows = self.batch_size * self.world_size
        cumulative = np.cumsum([self.weights[name] for name in self.names])
        points = (rng.random() + np.arange(rows)) / rows
        picks = np.minimum(np.searchsorted(cumulative, points, side="right"), len(self.names) - 1)
        return picks[rng.permutation(rows)]

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return this rank's batch `index` as int64 tensors (x, y) of shape (batch_size, seq_len)."""
        x, y = self._base_batch(index)
        x, y = x.clone(), y.clone()
        sources = self._global_sources(index)
        rng = np.random.default_rng([self.seed, index, _MIX_STREAM, 1])
        for source, name in enumerate(self.names):
            if name == self.base_name:
                continue
            tokens = self.sources[name]
            starts = rng.integers(0, len(tokens) - self.seq_len, size=len(sources))
            for row in np.flatnonzero(sources[self._rows()] == source):
                start = int(starts[self._rows()][row])
                window = torch.from_numpy(tokens[start : start + self.seq_len + 1].astype(np.int64))
                x[row], y[row] = window[:-1], window[1:]
        return x, y

    def _base_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self.base, "batch"):
            return self.base.batch(index)
        raise TypeError(
            f"base sampler {type(self.base).__name__} has no batch(index) method; "
            "use depthcurse.data.BatchSampler"
        )

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch(self.batches_drawn)
        self.batches_drawn += 1
        if hasattr(self.base, "batches_drawn"):
            self.base.batches_drawn = self.batches_drawn
        return batch

    def __iter__(self) -> MixtureSampler:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()

    def describe(self) -> dict[str, Any]:
        """Return the mixture for run records: normalized weights and each source's token count."""
        base_tokens = getattr(getattr(self.base, "store", None), "__len__", None)
        return {
            "sampler": "MixtureSampler",
            "seed": self.seed,
            "weights": dict(self.weights),
            "tokens": {
                self.base_name: base_tokens() if base_tokens else None,
                **{name: int(len(tokens)) for name, tokens in self.sources.items()},
            },
            "base_path": str(getattr(getattr(self.base, "store", None), "path", "")) or None,
            "global_batch_size": self.batch_size * self.world_size,
            "seq_len": self.seq_len,
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the batch counter, the base sampler's state and the mixture it is valid for."""
        return {
            "batches_drawn": self.batches_drawn,
            "seed": self.seed,
            "weights": dict(self.weights),
            "source_tokens": {name: int(len(tokens)) for name, tokens in self.sources.items()},
            "base": self.base.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state; the weights and source sizes must match."""
        expected = self.state_dict()
        if set(state) != set(expected):
            raise ValueError(f"mixture state has keys {sorted(state)}, expected {sorted(expected)}")
        for key in ("weights", "source_tokens"):
            if state[key] != expected[key]:
                raise ValueError(
                    f"mixture state has {key}={state[key]}, but this sampler has {expected[key]}; "
                    "resume with the same sources and weights"
                )
        self.base.load_state_dict(state["base"])
        self.seed = int(state["seed"])
        self.batches_drawn = int(state["batches_drawn"])
