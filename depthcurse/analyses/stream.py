"""One forward pass over a prompt set that feeds every residual-stream analysis.

`collect_stream` runs the model once per batch with a cache restricted to the
residual stream (h_l = `blocks.{l}.hook_resid_pre`, a_l = `hook_attn_out`,
m_l = `hook_mlp_out`, and h_L = `ln_final.hook_in`), selects the tokens that
count (real tokens, position 0 excluded by default), casts them to float32 and
updates the running statistics of each requested analysis: residual norms,
relative contributions, cosines, logit lens, tuned lens and the activation
parts of layer similarity. The cache is dropped after each batch, so memory
stays at one batch's activations plus the accumulators.

The returned `StreamStats` turns each analysis into its table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from depthcurse.analyses.common import (
    Conventions,
    check_kl_direction,
    prompts_prepend_bos,
    selected_tokens,
    token_batches,
)
from depthcurse.analyses.contributions import ContributionAccumulator
from depthcurse.analyses.cosines import CosineAccumulator
from depthcurse.analyses.layer_similarity import SimilarityAccumulator, weight_similarity
from depthcurse.analyses.logit_lens import LensAccumulator, LensHead
from depthcurse.analyses.residual_norms import NormAccumulator

ANALYSES = ("residual_norms", "contributions", "cosines", "logit_lens", "layer_similarity")


@dataclass
class StreamStats:
    """Accumulated statistics of one `collect_stream` pass; each method returns a tidy table."""

    model: Any
    conventions: Conventions
    accumulators: dict[str, Any] = field(default_factory=dict)
    n_prompts: int = 0
    n_tokens: int = 0

    def _table(self, name: str) -> pd.DataFrame:
        if name not in self.accumulators:
            raise KeyError(
                f"{name} was not collected in this pass (collected: {sorted(self.accumulators)}); "
                f"pass analyses=(..., {name!r}) to collect_stream"
            )
        table = self.accumulators[name].table(self.conventions)
        table.attrs["n_prompts"] = self.n_prompts
        return table

    def residual_norms(self) -> pd.DataFrame:
        return self._table("residual_norms")

    def contributions(self) -> pd.DataFrame:
        return self._table("contributions")

    def cosines(self) -> pd.DataFrame:
        return self._table("cosines")

    def logit_lens(self) -> pd.DataFrame:
        return self._table("logit_lens")

    def tuned_lens(self) -> pd.DataFrame:
        return self._table("tuned_lens")

    def layer_similarity(self, weights: bool = True) -> pd.DataFrame:
        """Activation similarity matrices, plus the weight matrices unless `weights=False`."""
        table = self._table("layer_similarity")
        if weights:
            weight_table = weight_similarity(self.model, self.conventions)
            table = pd.concat([table, weight_table], ignore_index=True)
            table.attrs.update(weight_table.attrs)
        return table


def residual_hook_names(n_layers: int, *, outputs: bool = True) -> list[str]:
    """Return the hook names of the residuals h_l and the final residual, and with
    `outputs` also those of the attention and MLP outputs a_l and m_l."""
    sites = ("resid_pre", "attn_out", "mlp_out") if outputs else ("resid_pre",)
    names = ["ln_final.hook_in"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.hook_{site}" for site in sites]
    return names


def next_token_targets(
    ids: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"]
) -> Int[Tensor, "batch pos"]:
    """Return the next real token at each position, or -1 where there is none."""
    targets = torch.full_like(ids, -1)
    has_next = mask[:, 1:].bool()
    targets[:, :-1] = torch.where(has_next, ids[:, 1:], targets[:, :-1])
    return targets


def float_tokens(cache: Any, name: str, keep: Tensor) -> Tensor:
    """Remove one activation from `cache` and return its selected tokens as (tokens, d_model) float32.

    Taking the activation out of the cache frees it as soon as its selected copy
    exists. So a batch's whole cache and all its copies never exist together (on
    smollm2 at 8 x 256 tokens each is 430 MB).
    """
    return cache.cache_dict.pop(name)[keep].float()


def collect_stream(
    model: Any,
    prompts: Any,
    *,
    analyses: Iterable[str] = ANALYSES,
    batch_size: int = 8,
    exclude_pos0: bool = True,
    kl_direction: str = "lens||final",
    tuned_lens: Any = None,
    lens_layers: Sequence[int] | None = None,
    prepend_bos: bool | None = None,
    model_name: str | None = None,
    progress: bool = False,
) -> StreamStats:
    """Run `model` once over `prompts` and accumulate the requested analyses.

    `model` is a hooked model from `depthcurse.load`. `prompts` is a
    `PromptSet`, a (batch, pos) token tensor or (ids, attention mask) with
    right padding. `analyses` is a subset of `ANALYSES`; passing a `TunedLens`
    as `tuned_lens` adds the tuned-lens metrics. `lens_layers` restricts both
    lenses to those read-out points (0..L, L the output), because unembedding
    every token at every layer dominates the cost. `prepend_bos` records, for raw
    token batches, whether they start with BOS (a `PromptSet` states its own).
    """
    analyses = tuple(analyses)
    unknown = sorted(set(analyses) - set(ANALYSES))
    if unknown:
        raise ValueError(f"unknown analyses {unknown}; choose from {ANALYSES}")
    check_kl_direction(kl_direction)
    n_layers = model.cfg.n_layers
    if lens_layers is not None:
        lens_layers = sorted(set(lens_layers))
        if not lens_layers or lens_layers[0] < 0 or lens_layers[-1] > n_layers:
            raise ValueError(
                f"lens_layers={lens_layers} must be a non-empty subset of 0..{n_layers} "
                f"(layer {n_layers} is the output)"
            )
    if prepend_bos is None:
        prepend_bos = prompts_prepend_bos(prompts)
    conventions = Conventions.from_model(
        model,
        exclude_pos0=exclude_pos0,
        prepend_bos=prepend_bos,
        kl_direction=kl_direction,
        model_name=model_name,
    )
    accumulators: dict[str, Any] = {}
    builders = {
        "residual_norms": NormAccumulator,
        "contributions": ContributionAccumulator,
        "cosines": CosineAccumulator,
        "layer_similarity": SimilarityAccumulator,
    }
    for name in analyses:
        if name in builders:
            accumulators[name] = builders[name]()
    needs_head = "logit_lens" in analyses or tuned_lens is not None
    head = LensHead.from_model(model) if needs_head else None
    if "logit_lens" in analyses:
        accumulators["logit_lens"] = LensAccumulator(head, kl_direction, layers=lens_layers)
    if tuned_lens is not None:
        tuned_lens.check_model(model)
        # NOTE: tests run on CPU only; moving the lens to the model's device is untested on GPU.
        tuned_lens.to(next(model.parameters()).device)
        accumulators["tuned_lens"] = LensAccumulator(
            head, kl_direction, translate=tuned_lens.translate, lens="tuned", layers=lens_layers
        )

    # The lenses read only the residuals h_l: without other analyses the attention and
    # MLP outputs are not cached (on smollm2 at 8 x 256 tokens, 280 MB and their copies).
    outputs = any(name not in ("logit_lens", "tuned_lens") for name in accumulators)
    names = residual_hook_names(n_layers, outputs=outputs)
    stats = StreamStats(model, conventions, accumulators)
    batches = token_batches(prompts, batch_size)
    device = next(model.parameters()).device
    for ids, mask in tqdm(batches, desc="stream", disable=not progress):
        ids, mask = ids.to(device), mask.to(device)
        keep = selected_tokens(mask, exclude_pos0)
        with torch.no_grad():
            logits, cache = model.run_with_cache(ids, names_filter=names, attention_mask=mask)

        h = [
            float_tokens(cache, f"blocks.{layer}.hook_resid_pre", keep) for layer in range(n_layers)
        ]
        h.append(float_tokens(cache, "ln_final.hook_in", keep))
        a, m = [], []
        if outputs:
            a = [
                float_tokens(cache, f"blocks.{layer}.hook_attn_out", keep)
                for layer in range(n_layers)
            ]
            m = [
                float_tokens(cache, f"blocks.{layer}.hook_mlp_out", keep)
                for layer in range(n_layers)
            ]
        del cache
        for name, accumulator in accumulators.items():
            if name in ("logit_lens", "tuned_lens"):
                targets = next_token_targets(ids, mask)[keep]
                accumulator.update(h, logits, targets, keep=keep)
            else:
                accumulator.update(h, a, m)
        stats.n_prompts += ids.shape[0]
        stats.n_tokens += int(keep.sum())
        # Free this batch's activations and logits before the next forward pass, which
        # would otherwise run with them still held (820 MB at 8 x 256 tokens on smollm2).
        del h, a, m, logits
    return stats


def stats_for(
    source: Any, prompts: Any, analyses: tuple[str, ...], options: dict[str, Any]
) -> StreamStats:
    """Return `source` if it is already a `StreamStats`, else run `collect_stream` on it."""
    if isinstance(source, StreamStats):
        if prompts is not None or options:
            raise ValueError(
                "source is already a StreamStats; prompts and options apply only to a model"
            )
        return source
    if prompts is None:
        raise ValueError(
            "prompts are required when source is a model; pass a PromptSet or token batch"
        )
    return collect_stream(source, prompts, analyses=analyses, **options)
