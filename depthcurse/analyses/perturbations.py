"""Layer- and block-level perturbations: remove, swap, reverse and shuffle layers.

Following the permutation analyses of Kapl et al. 2025 (arXiv 2512.08819) and
Lad et al. 2024 (arXiv 2406.19384), the model is run with its decoder layers in
a changed order (see `surgery.layer_order`) and compared with the clean model
on the same tokens. At level "layer" the unit is one layer. At level "block" it
is b consecutive layers, where b is given or read from the width of the
checkpoint's growth steps (`growth_history` events). Kinds, per unit k:

- remove: drop unit k;
- swap: exchange units k and k + 1;
- reverse_inside (block level): reverse the layers inside block k;
- reverse_middle: reverse the order of the middle units (all but the first and last);
- shuffle_middle: a seeded random order of the middle units other than the identity
  (`position` is the draw index);
- identity: the unchanged order, a check that surgery itself changes nothing.

Metrics over scored positions (next token real, position 0 excluded by default),
pooled over all tokens of all prompts, in float32:

    delta_nll = mean(NLL_perturbed − NLL_clean)   (nats/token)
    kl        = mean Σ_v p_clean(v) (log p_clean(v) − log p_perturbed(v))   i.e. KL(p_clean ‖ p_perturbed)
    top1_agreement = mean[argmax p_perturbed = argmax p_clean]
    nll       = mean NLL_perturbed (for kind "identity", the clean NLL)

Layer-list surgery acts on every position, position 0 included.

Engines: "prefix" runs the decoder layers one at a time (`engine.LayerStack`).
A perturbed order that keeps layers 0..p−1 in place starts from the clean run's
residual at layer p, so removing or swapping late layers costs only the layers
after the change. Batches are the outer loop, so one batch's clean residuals and
clean log-probabilities serve every perturbation. "surgery" runs one full
forward of the model per perturbation with its layer list rearranged
(`surgery.layer_order`); it is the reference for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from depthcurse.analyses.engine import (
    CleanRun,
    LayerStack,
    batches_of,
    clean_run,
    decoder_layers,
    hf_model_of,
    model_label,
    model_note,
    prediction_mask,
    prompt_set_name,
)
from depthcurse.analyses.surgery import layer_order
from depthcurse.hardware import release_free_memory

LEVELS = ("layer", "block")
KINDS = ("identity", "remove", "swap", "reverse_inside", "reverse_middle", "shuffle_middle")
ENGINES = ("prefix", "surgery")


@dataclass(frozen=True)
class Perturbation:
    """One changed layer order: level, kind, unit index (or None) and the order itself."""

    level: str
    kind: str
    position: int | None
    order: tuple[int, ...]


def block_size_of(model: Any) -> int:
    """Return the number of layers added per growth step from the model's growth history."""
    info = getattr(model, "depthcurse_info", None)
    history = list(getattr(info, "growth_history", None) or [])
    widths = {int(e["depth_after"]) - int(e["depth_before"]) for e in history}
    if not widths:
        raise ValueError(
            "the model has no growth history to read a block size from; pass block_size=b"
        )
    if len(widths) > 1:
        raise ValueError(
            f"growth steps added different numbers of layers {sorted(widths)}; pass block_size=b"
        )
    return widths.pop()


def perturbation_orders(
    n_layers: int,
    block_size: int,
    *,
    levels: tuple[str, ...] = LEVELS,
    kinds: tuple[str, ...] = KINDS,
    n_shuffles: int = 3,
    seed: int = 0,
) -> list[Perturbation]:
    """List the perturbed layer orders of every requested level and kind."""
    unknown = [k for k in kinds if k not in KINDS] + [v for v in levels if v not in LEVELS]
    if unknown:
        raise ValueError(f"unknown kinds or levels {unknown}; choose from {KINDS} and {LEVELS}")
    if block_size < 1 or n_layers % block_size:
        raise ValueError(
            f"block size {block_size} does not divide the {n_layers} layers; pass another block_size"
        )
    rng = np.random.default_rng(seed)
    result = [Perturbation("layer", "identity", None, tuple(range(n_layers)))] if "identity" in kinds else []
    for level in levels:
        size = 1 if level == "layer" else block_size
        units = [list(range(u * size, (u + 1) * size)) for u in range(n_layers // size)]
        result += _unit_orders(level, units, kinds, n_shuffles, rng)
    return result


def _unit_orders(
    level: str, units: list[list[int]], kinds: tuple[str, ...], n_shuffles: int, rng: Any
) -> list[Perturbation]:
    def flat(arranged: list[list[int]]) -> tuple[int, ...]:
        return tuple(i for unit in arranged for i in unit)

    result = []
    n_units = len(units)
    if "remove" in kinds and n_units > 1:
        for k in range(n_units):
            result.append(Perturbation(level, "remove", k, flat(units[:k] + units[k + 1 :])))
    if "swap" in kinds:
        for k in range(n_units - 1):
            arranged = [*units[:k], units[k + 1], units[k], *units[k + 2 :]]
            result.append(Perturbation(level, "swap", k, flat(arranged)))
    if "reverse_inside" in kinds and len(units[0]) > 1:
        for k in range(n_units):
            arranged = [*units[:k], units[k][::-1], *units[k + 1 :]]
            result.append(Perturbation(level, "reverse_inside", k, flat(arranged)))
    middle = units[1:-1]
    if len(middle) > 1:
        if "reverse_middle" in kinds:
            arranged = [units[0], *middle[::-1], units[-1]]
            result.append(Perturbation(level, "reverse_middle", None, flat(arranged)))
        if "shuffle_middle" in kinds:
            for draw in range(n_shuffles):
                permutation = rng.permutation(len(middle))
                while (permutation == np.arange(len(middle))).all():
                    permutation = rng.permutation(len(middle))
                shuffled = [middle[i] for i in permutation]
                result.append(Perturbation(level, "shuffle_middle", draw, flat([units[0], *shuffled, units[-1]])))
    return result


def forward_logits(model: Any, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Return logits from a `TransformerBridge` or a transformers causal LM."""
    with torch.no_grad():
        if hasattr(model, "original_model"):
            return model(tokens, attention_mask=attention_mask)
        return hf_model_of(model)(input_ids=tokens, attention_mask=attention_mask).logits


class CleanReference:
    """Clean probabilities, NLL, top-1 tokens and scored positions of one batch.

    Computed once per batch and compared with every perturbed run of it. With z
    a row of logits, log Z = logsumexp(z) and p = softmax(z_clean):

        -log q(next)  = log Z_q − z_q[next]
        KL(p ‖ q)     = Σ p log p − Σ p log q = (<p, z_clean> − <p, z_q>) + (log Z_q − log Z_clean)

    (Σ p = 1), so a comparison takes one exponential pass and one dot product per
    row instead of a log-softmax, and equal logits give exactly zero.
    """

    def __init__(
        self,
        clean: torch.Tensor | Callable[[int], torch.Tensor],
        tokens: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        exclude_pos0: bool = True,
    ) -> None:
        """`clean` is the batch's clean logits, or a function of the row index that
        returns one sequence's clean logits (see `_row_terms`)."""
        self.tokens, self.attention_mask, self.exclude_pos0 = tokens, attention_mask, exclude_pos0
        self.mask = prediction_mask(attention_mask.to(tokens.device), exclude_pos0=exclude_pos0)
        row_logits = clean.__getitem__ if isinstance(clean, torch.Tensor) else clean
        first = torch.softmax(row_logits(0).float(), dim=-1)
        self.p = first.new_empty((tokens.shape[0], *first.shape))
        self.p[0] = first
        del first
        for row in range(1, tokens.shape[0]):
            self.p[row] = torch.softmax(row_logits(row).float(), dim=-1)
        self.log_z, self.dot, self.nll, self.top1 = self._row_terms(clean)
        self.nll = self.nll * self.mask

    def _row_terms(
        self, logits: torch.Tensor | Callable[[int], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return log Z, <p_clean, z>, the next-token NLL and the argmax per position.

        `logits` is a (batch, pos, vocab) tensor or a function of the row index that
        returns that row's (pos, vocab) logits, so that a caller can unembed one
        sequence at a time and never hold the whole batch's logits.
        """
        row_logits = logits.__getitem__ if isinstance(logits, torch.Tensor) else logits
        log_z = torch.zeros(self.tokens.shape, dtype=torch.float32, device=self.mask.device)
        dot, nll = torch.zeros_like(log_z), torch.zeros_like(log_z)
        top1 = torch.zeros(self.tokens.shape, dtype=torch.long, device=self.mask.device)
        for row in range(self.tokens.shape[0]):
            z = row_logits(row).float()
            log_z[row] = torch.logsumexp(z, dim=-1)
            dot[row] = torch.linalg.vecdot(self.p[row], z)
            next_tokens = self.tokens[row, 1:, None].to(z.device)
            nll[row, :-1] = log_z[row, :-1] - z[:-1].gather(-1, next_tokens)[..., 0]
            top1[row] = z.argmax(-1)
        return log_z, dot, nll, top1

    def compare(
        self, perturbed: torch.Tensor | Callable[[int], torch.Tensor]
    ) -> dict[str, tuple[float, int]]:
        """Return summed metrics of `perturbed` logits and the scored-position count.

        `perturbed` is the batch's logits or a function of the row index returning one
        sequence's logits (see `_row_terms`).
        """
        log_z, dot, nll_perturbed, top1 = self._row_terms(perturbed)
        kl = (self.dot - dot) + (log_z - self.log_z)
        nll_perturbed = nll_perturbed * self.mask
        agree = (self.top1 == top1).float()
        mask = self.mask
        count = int(mask.sum())
        return {
            "delta_nll": (float((nll_perturbed - self.nll)[mask].sum()), count),
            "kl": (float(kl[mask].sum()), count),
            "top1_agreement": (float(agree[mask].sum()), count),
            "nll": (float(nll_perturbed[mask].sum()), count),
        }


def compare_logits(
    clean: torch.Tensor, perturbed: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor,
    *, exclude_pos0: bool = True,
) -> dict[str, tuple[float, int]]:
    """Return summed metrics and the scored-position count for one batch."""
    reference = CleanReference(clean, tokens, attention_mask, exclude_pos0=exclude_pos0)
    return reference.compare(perturbed)


def unchanged_prefix(order: tuple[int, ...]) -> int:
    """Return p such that `order` starts with layers 0..p−1 in place."""
    p = 0
    while p < len(order) and order[p] == p:
        p += 1
    return p


def prefix_residual(
    stack: LayerStack, clean: CleanRun, order: tuple[int, ...]
) -> torch.Tensor | None:
    """Return the final residual of running the layers in `order`, reusing the clean prefix.

    None for the unchanged order, whose result is the clean run itself.
    """
    # NOTE: LayerStack builds one causal mask for all layers, while the surgery engine
    # reorders config.layer_types too. Models mixing sliding-window and full layers
    # would differ between the engines. smollm2-135m and depthcurse checkpoints use full
    # attention in every layer.
    start = unchanged_prefix(order)
    if start == len(order) == stack.n_layers:
        return None
    h = clean.resid[start]
    with torch.no_grad():
        for index in order[start:]:
            h = stack.layer(index, h)[2]
    return h


def _row_logits(stack: LayerStack, h: torch.Tensor, row: int) -> torch.Tensor:
    return stack.logits(h[row])


def perturbations(
    model: Any,
    prompts: Any,
    *,
    block_size: int | None = None,
    levels: tuple[str, ...] = LEVELS,
    kinds: tuple[str, ...] = KINDS,
    n_shuffles: int = 3,
    seed: int = 0,
    batch_size: int = 8,
    exclude_pos0: bool = True,
    engine: str = "prefix",
    progress: bool = True,
) -> pd.DataFrame:
    """Return Δ NLL, KL(p_clean ‖ p_perturbed) and top-1 agreement for each perturbation.

    One row per level × kind × position × metric, ready to pivot into a heatmap
    of position against kind. `block_size` defaults to the growth-step width;
    `engine` is "prefix" or "surgery" (see the module docstring); `progress`
    shows a progress bar over batches × perturbations on stderr.
    """
    n_layers = len(decoder_layers(model))
    if "block" in levels and block_size is None:
        block_size = block_size_of(model)
    orders = perturbation_orders(
        n_layers, block_size or 1, levels=levels, kinds=kinds, n_shuffles=n_shuffles, seed=seed
    )
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    batches = batches_of(prompts, batch_size)
    # Different kinds can give the same order (at block size 2, reversing block k swaps
    # layers 2k and 2k + 1), so each distinct order runs once and all its rows share it.
    distinct = list(dict.fromkeys(perturbation.order for perturbation in orders))
    totals: list[dict[str, list[float]]] = [{} for _ in distinct]

    def add(index: int, metrics: dict[str, tuple[float, int]]) -> None:
        for metric, (value, count) in metrics.items():
            total = totals[index].setdefault(metric, [0.0, 0])
            total[0] += value
            total[1] += count

    bar = tqdm(total=len(distinct) * len(batches), desc="perturbations", disable=not progress)
    if engine == "prefix":
        for ids, mask in batches:
            stack = LayerStack(model, ids, mask)
            # Unembed one sequence at a time, the clean run too: the batch's logits would
            # be a vocabulary-wide tensor of 384 MiB at 8 x 256 tokens on smollm2.
            clean = clean_run(stack, logits=False, mid=False)
            clean_logits = partial(_row_logits, stack, clean.resid[-1])
            reference = CleanReference(
                clean_logits, stack.tokens, stack.attention_mask, exclude_pos0=exclude_pos0
            )
            for index, order in enumerate(distinct):
                h = prefix_residual(stack, clean, order)
                perturbed = clean_logits if h is None else partial(_row_logits, stack, h)
                with torch.no_grad():
                    add(index, reference.compare(perturbed))
                bar.update()
            del stack, clean, clean_logits, reference
            release_free_memory()
    else:
        references = [
            CleanReference(forward_logits(model, ids, mask), ids, mask, exclude_pos0=exclude_pos0)
            for ids, mask in batches
        ]
        for index, order in enumerate(distinct):
            with layer_order(model, order):
                for (ids, mask), reference in zip(batches, references, strict=True):
                    add(index, reference.compare(forward_logits(model, ids, mask)))
                    bar.update()
    bar.close()
    rows = []
    by_order = dict(zip(distinct, totals, strict=True))
    for perturbation in orders:
        for metric, (value, count) in by_order[perturbation.order].items():
            rows.append(
                (
                    perturbation.level,
                    perturbation.kind,
                    perturbation.position,
                    " ".join(map(str, perturbation.order)),
                    metric,
                    value / max(count, 1),
                    count,
                )
            )
    table = pd.DataFrame(
        rows, columns=["level", "kind", "position", "order", "metric", "value", "n_tokens"]
    )
    table["position"] = table["position"].astype("Int64")
    table.insert(0, "model", model_label(model))
    table.insert(1, "prompt_set", prompt_set_name(prompts))
    table["block_size"] = block_size
    table["n_layers"] = n_layers
    table["statistic"] = "mean"
    table["exclude_pos0"] = exclude_pos0
    table["note"] = model_note(model)
    return table
