"""Depth growth: where new layers go, the stage schedule, and compute accounting.

A model of depth L is a stack of n = L/b blocks of b layers. One growth event
inserts b new layers, each a deep copy (weights and, by default, Adam moments)
of an existing layer:

- ``stack``: gradual stacking (Reddi et al. 2023) copies the last block and
  appends it.
- ``midas``: MIDAS (Saunshi et al. 2024, arXiv 2409.19044) copies block
  m = ceil(n/2) (1-based) and inserts the copy right after it.
- ``lidas``: LIDAS (Kapl et al. 2025, arXiv 2512.08819) copies the b layers
  centred on the exact middle, [L/2 - b/2, L/2 + b/2), and inserts them at
  position L/2. When n is odd, the exact middle falls inside a block. The
  ``lidas_odd`` option then chooses between that centred window (``"center"``,
  the default) and copying the whole middle block as MIDAS does (``"block"``).
- ``none``: the baseline, trained at full depth; it never grows.

Stages start at one block (depth b) and add one block per stage. Stage i of k
gets a share of the steps proportional to i**alpha (the PROP-alpha schedule of
MIDAS), so a grown run takes as many steps as the baseline at lower cost.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from depthcurse.config import ModelConfig

METHODS = ("none", "stack", "midas", "lidas")


class GrowthError(ValueError):
    """A growth method, depth, block size or schedule is invalid."""


@dataclass(frozen=True)
class GrowthPlan:
    """One growth event: `sources` (pre-growth indices) are copied and inserted at `insert_at`."""

    method: str
    depth: int
    insert_at: int
    sources: tuple[int, ...]

    @property
    def order(self) -> list[int]:
        """The grown model's layers as pre-growth layer indices."""
        return (
            list(range(self.insert_at))
            + list(self.sources)
            + list(range(self.insert_at, self.depth))
        )

    @property
    def new_positions(self) -> list[int]:
        """Positions of the inserted copies in the grown model."""
        return list(range(self.insert_at, self.insert_at + len(self.sources)))

    def position_after(self, old_index: int) -> int:
        """Position in the grown model of the original pre-growth layer `old_index`."""
        return old_index if old_index < self.insert_at else old_index + len(self.sources)


def check_depth(depth: int, block_size: int) -> None:
    if block_size <= 0:
        raise GrowthError(f"block_size must be positive, got {block_size}")
    if depth <= 0 or depth % block_size:
        raise GrowthError(
            f"depth {depth} is not a positive multiple of block_size {block_size}; "
            f"choose n_layers divisible by the block size"
        )


def plan_growth(
    method: str, depth: int, block_size: int, *, lidas_odd: str = "center"
) -> GrowthPlan:
    """Return where one growth event of `method` puts its b copies in a depth-`depth` model."""
    check_depth(depth, block_size)
    b = block_size
    n_blocks = depth // b
    if method == "stack":
        return GrowthPlan(method, depth, depth, tuple(range(depth - b, depth)))
    if method == "midas":
        m = math.ceil(n_blocks / 2)
        return GrowthPlan(method, depth, m * b, tuple(range((m - 1) * b, m * b)))
    if method == "lidas":
        if lidas_odd not in ("center", "block"):
            raise GrowthError(f"lidas_odd must be 'center' or 'block', got {lidas_odd!r}")
        if n_blocks % 2 and lidas_odd == "block":
            return plan_growth("midas", depth, block_size)
        if b % 2:
            raise GrowthError(f"lidas needs an even block_size to centre its window, got {b}")
        middle = depth // 2
        return GrowthPlan(method, depth, middle, tuple(range(middle - b // 2, middle + b // 2)))
    if method == "none":
        raise GrowthError("method 'none' is the full-depth baseline and never grows")
    raise GrowthError(f"unknown growth method {method!r}; choose one of {', '.join(METHODS)}")


def layer_order(
    method: str, depth: int, block_size: int, *, lidas_odd: str = "center"
) -> list[int]:
    """Return the grown model's layers as source-layer indices of the depth-`depth` model.

    >>> layer_order("midas", 8, 4)
    [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]
    >>> layer_order("lidas", 8, 4)
    [0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7]
    >>> layer_order("stack", 4, 2)
    [0, 1, 2, 3, 2, 3]
    """
    if method == "none":
        check_depth(depth, block_size)
        return list(range(depth))
    return plan_growth(method, depth, block_size, lidas_odd=lidas_odd).order


# ---------------------------------------------------------------------------
# Stage schedule


def stage_depths(target_depth: int, block_size: int, initial_depth: int | None = None) -> list[int]:
    """Return the depth of every stage, from `initial_depth` (default one block) to the target."""
    check_depth(target_depth, block_size)
    start = block_size if initial_depth is None else initial_depth
    check_depth(start, block_size)
    if start > target_depth:
        raise GrowthError(f"initial depth {start} exceeds the target depth {target_depth}")
    return list(range(start, target_depth + 1, block_size))


def stage_lengths(
    total_steps: int, n_stages: int, alpha: float = 1.0, explicit: list[int] | None = None
) -> list[int]:
    """Split `total_steps` over `n_stages`, stage i (1-based) getting a share proportional to i**alpha.

    Rounding uses largest remainders so the lengths sum to `total_steps`
    exactly. An `explicit` list is validated and returned instead.

    >>> stage_lengths(100, 4)
    [10, 20, 30, 40]
    """
    if explicit is not None:
        if len(explicit) != n_stages:
            raise GrowthError(
                f"the schedule lists {len(explicit)} stage lengths but growth from the initial to the "
                f"target depth has {n_stages} stages"
            )
        if any(length <= 0 for length in explicit):
            raise GrowthError(f"every stage length must be positive, got {explicit}")
        if sum(explicit) != total_steps:
            raise GrowthError(
                f"the stage lengths {explicit} sum to {sum(explicit)}, not to max_steps={total_steps}"
            )
        return list(explicit)
    if n_stages > total_steps:
        raise GrowthError(
            f"{n_stages} stages need at least {n_stages} steps, got max_steps={total_steps}"
        )
    weights = [(i + 1) ** alpha for i in range(n_stages)]
    exact = [total_steps * w / sum(weights) for w in weights]
    lengths = [max(1, math.floor(x)) for x in exact]
    remainders = sorted(
        range(n_stages), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True
    )
    shortfall = total_steps - sum(lengths)
    for i in remainders[: max(shortfall, 0)]:
        lengths[i] += 1
    while sum(lengths) > total_steps:  # only when max(1, ...) rounded a tiny stage up
        lengths[lengths.index(max(lengths))] -= 1
    return lengths


def stage_boundaries(lengths: list[int]) -> list[int]:
    """Return the global step at which each stage after the first starts."""
    boundaries, step = [], 0
    for length in lengths[:-1]:
        step += length
        boundaries.append(step)
    return boundaries


# ---------------------------------------------------------------------------
# Compute accounting


def flops_per_token(cfg: ModelConfig, depth: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of a depth-`depth` model.

    This is the usual estimate, not a count of kernels. The matrix multiplies
    of the layers and the unembedding cost 6 FLOPs per parameter per token,
    while an embedding lookup is free. Attention scores and their weighted sum
    add 12 * depth * seq_len * d_model.
    """
    per_layer = cfg.replace(n_layers=1).param_count(include_embeddings=False) - cfg.d_model
    unembed = cfg.vocab_size * cfg.d_model
    return 6.0 * (depth * per_layer + unembed) + 12.0 * depth * seq_len * cfg.d_model


def compute_fraction(
    cfg: ModelConfig,
    depths: list[int],
    lengths: list[int],
    seq_len: int,
    *,
    layers_only: bool = False,
) -> float:
    """Return the fraction of the full-depth baseline's training FLOPs that a schedule uses."""
    total_steps = sum(lengths)
    target = cfg.n_layers
    if layers_only:
        return sum(d * n for d, n in zip(depths, lengths, strict=True)) / (target * total_steps)
    used = sum(flops_per_token(cfg, d, seq_len) * n for d, n in zip(depths, lengths, strict=True))
    return used / (flops_per_token(cfg, target, seq_len) * total_steps)


# ---------------------------------------------------------------------------
# Layer lineage


@dataclass
class Lineage:
    """Identity of every layer: a unique id and the id it was copied from (None for originals)."""

    layer_ids: list[int]
    copied_from: list[int | None]
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def initial(cls, depth: int) -> Lineage:
        return cls(list(range(depth)), [None] * depth)

    def apply(self, plan: GrowthPlan, *, stage: int, step: int) -> dict[str, Any]:
        """Record one growth event and return its history entry."""
        next_id = max(self.layer_ids) + 1
        new_ids, new_from, new_layers = [], [], []
        insert = set(plan.new_positions)
        copy_index = 0
        for position, old in enumerate(plan.order):
            if position in insert:
                layer_id = next_id + copy_index
                copy_index += 1
                new_ids.append(layer_id)
                new_from.append(self.layer_ids[old])
                new_layers.append(
                    {
                        "position": position,
                        "id": layer_id,
                        "source_id": self.layer_ids[old],
                        "source_position": plan.position_after(old),
                        "source_index_before": old,
                    }
                )
            else:
                new_ids.append(self.layer_ids[old])
                new_from.append(self.copied_from[old])
        event = {
            "stage": stage,
            "step": step,
            "method": plan.method,
            "depth_before": plan.depth,
            "depth_after": len(plan.order),
            "insert_at": plan.insert_at,
            "order": plan.order,
            "new_layers": new_layers,
        }
        self.layer_ids, self.copied_from = new_ids, new_from
        self.history.append(event)
        return event

    @property
    def layer_sources(self) -> list[int]:
        """For each layer, the id of the layer it was copied from, or its own id for originals."""
        return [
            src if src is not None else own
            for own, src in zip(self.layer_ids, self.copied_from, strict=True)
        ]

    def root_ids(self) -> list[int]:
        """For each layer, the id of the initial-stage layer its copy chain starts from."""
        parent = {}
        for event in self.history:
            for new in event["new_layers"]:
                parent[new["id"]] = new["source_id"]
        roots = []
        for layer_id in self.layer_ids:
            while layer_id in parent:
                layer_id = parent[layer_id]
            roots.append(layer_id)
        return roots

    def to_metadata(self) -> dict[str, Any]:
        return {
            "layer_ids": list(self.layer_ids),
            "layer_sources": self.layer_sources,
            "growth_history": copy.deepcopy(self.history),
        }

    @classmethod
    def from_history(cls, initial_depth: int, history: list[dict[str, Any]]) -> Lineage:
        """Rebuild the lineage from a checkpoint's growth history alone."""
        lineage = cls.initial(initial_depth)
        for event in history:
            insert_at = event["insert_at"]
            order = event["order"]
            width = event["depth_after"] - event["depth_before"]
            plan = GrowthPlan(
                event["method"],
                event["depth_before"],
                insert_at,
                tuple(order[insert_at : insert_at + width]),
            )
            lineage.apply(plan, stage=event["stage"], step=event["step"])
        return lineage


# ---------------------------------------------------------------------------
# Growing a model and its optimizer


def grow_model(model: nn.Module, plan: GrowthPlan) -> None:
    """Insert deep copies of the planned layers into `model.blocks`, in place.

    `model` is a `DepthcurseLM`; its config's `n_layers` is updated.
    """
    blocks = list(model.blocks)
    if len(blocks) != plan.depth:
        raise GrowthError(
            f"the plan is for depth {plan.depth} but the model has {len(blocks)} layers"
        )
    insert = set(plan.new_positions)
    grown = [
        copy.deepcopy(blocks[old]) if pos in insert else blocks[old]
        for pos, old in enumerate(plan.order)
    ]
    model.blocks = nn.ModuleList(grown)
    model.cfg = model.cfg.replace(n_layers=len(grown))


def source_parameter_names(model: nn.Module, plan: GrowthPlan) -> dict[str, str]:
    """Map every parameter name of the grown model to its name before growth."""
    mapping = {}
    for name, _ in model.named_parameters():
        if name.startswith("blocks."):
            _, position, rest = name.split(".", 2)
            mapping[name] = f"blocks.{plan.order[int(position)]}.{rest}"
        else:
            mapping[name] = name
    return mapping


def transfer_optimizer_state(
    old_state: dict[str, dict[str, Any]],
    new_optimizer: torch.optim.Optimizer,
    model: nn.Module,
    plan: GrowthPlan,
    *,
    copy_moments: bool = True,
) -> None:
    """Fill `new_optimizer`'s state from `old_state` (pre-growth parameter name -> state).

    Existing layers keep their own moments. Each copied layer gets a clone of
    its source's moments, or no state (fresh moments) when `copy_moments` is
    False.
    """
    new_positions = set(plan.new_positions)
    sources = source_parameter_names(model, plan)
    for name, param in model.named_parameters():
        is_copy = name.startswith("blocks.") and int(name.split(".")[1]) in new_positions
        if is_copy and not copy_moments:
            continue
        state = old_state.get(sources[name])
        if state:
            new_optimizer.state[param] = {
                key: value.clone() if torch.is_tensor(value) else value
                for key, value in state.items()
            }


def optimizer_state_by_name(
    optimizer: torch.optim.Optimizer, model: nn.Module
) -> dict[str, dict[str, Any]]:
    """Return the optimizer's per-parameter state keyed by parameter name."""
    return {
        name: optimizer.state[param]
        for name, param in model.named_parameters()
        if param in optimizer.state
    }
