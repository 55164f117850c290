"""Random training batches that resume exactly, and fixed evaluation batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from depthcurse.data.tokens import TokenStore, require_tokens


def _windows(
    tokens: np.ndarray, starts: np.ndarray, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)
    x = torch.from_numpy(np.ascontiguousarray(rows[:, :-1]))
    y = torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))
    return x, y


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class BatchSampler:
    """Random training windows where batch k depends only on (seed, k).

    Each batch is drawn as a global batch of `batch_size * world_size` window
    start offsets from `numpy.random.default_rng([seed, k])`, and rank r keeps
    rows `[r * batch_size, (r + 1) * batch_size)`. So the ranks together see the
    single-process global batch, and resuming needs only the batch counter.
    Offsets are uniform over the whole token array and may cross document
    boundaries, where the `<|endoftext|>` separator sits.
    NOTE: NumPy promises the same random stream only for the same NumPy build
    (numpy.random compatibility policy), so resuming after a NumPy upgrade may
    draw different batches.
    """

    def __init__(
        self,
        store: TokenStore,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_positive(batch_size=batch_size, seq_len=seq_len, world_size=world_size)
        if not 0 <= rank < world_size:
            raise ValueError(
                f"rank {rank} is outside 0..{world_size - 1} for world_size={world_size}"
            )
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        require_tokens(store, seq_len)
        self.store = store
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batches_drawn = 0

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return batch `index` as int64 tensors (x, y) of shape (batch_size, seq_len)."""
        rng = np.random.default_rng([self.seed, index])
        high = len(self.store) - self.seq_len
        starts = rng.integers(0, high, size=self.batch_size * self.world_size)
        rank_starts = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return _windows(self.store.tokens, rank_starts, self.seq_len)

    def __iter__(self) -> BatchSampler:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch(self.batches_drawn)
        self.batches_drawn += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """Return the position in the batch sequence, plus the settings it is valid for."""
        return {
            "batches_drawn": self.batches_drawn,
            "seed": self.seed,
            "global_batch_size": self.batch_size * self.world_size,
            "seq_len": self.seq_len,
            "num_tokens": len(self.store),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Load a saved state, so the next batch continues its sequence.

        The state may come from a run with another world size, as long as
        batch_size * world_size, seq_len and the token count are the same.
        """
        expected = self.state_dict()
        if set(state) != set(expected):
            raise ValueError(f"sampler state has keys {sorted(state)}, expected {sorted(expected)}")
        for key in ("global_batch_size", "seq_len", "num_tokens"):
            if state[key] != expected[key]:
                raise ValueError(
                    f"sampler state has {key}={state[key]}, but this sampler has {expected[key]}; "
                    "resume with the same data, seq_len and batch_size * world_size"
                )
        self.seed = int(state["seed"])
        self.batches_drawn = int(state["batches_drawn"])


def eval_batches(
    store: TokenStore, batch_size: int, seq_len: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield consecutive, non-overlapping windows from the start of `store` as (x, y) batches.

    Window i covers inputs `[i * seq_len, (i + 1) * seq_len)`. The last batch may
    hold fewer than `batch_size` rows. At most `max_batches` batches are yielded.
    """
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    require_tokens(store, seq_len)
    starts = np.arange((len(store) - 1) // seq_len) * seq_len
    for number, first in enumerate(range(0, len(starts), batch_size)):
        if max_batches is not None and number >= max_batches:
            return
        yield _windows(store.tokens, starts[first : first + batch_size], seq_len)
