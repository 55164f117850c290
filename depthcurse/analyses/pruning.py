"""Pruning metrics: ShortGPT block influence, angular distance, and Δ NLL of removing a layer.

With h_l the residual entering layer l (h_L the input to the final norm):

- Block influence (Men et al. 2024, arXiv 2403.03853):
  BI_l = 1 − E_{prompt, position}[cos(h_l, h_{l+1})], with NaN replaced by 0.5
  as in ShortGPT. Low BI marks a layer that barely turns its input.
- Angular distance (Gromov et al. 2024, arXiv 2403.17887), on the last real token:
  d(l, n) = E_prompt[arccos(cos(h_l, h_{l+n})) / π] for n = 1..⌊L/2⌋ and
  l = 0..L − n; the block of n layers starting at argmin_l d(l, n) is the one
  to prune.
- delta_nll_remove: mean next-token NLL with layer l removed minus the clean
  NLL (nats/token). Removing means Δ_l = 0 at every position except 0, so
  position 0 keeps its clean residual; layers after l are run from the clean
  residual at l (no prefix recomputation). These removed runs are the
  current-mode layer skips of `skip_effects`, so a `SkipArrays` with
  `removal_nll` computed on the same prompts can stand in for them.

Cosines and NLL are averaged over positions 1..n−1 by default (`exclude_pos0`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from depthcurse.analyses.engine import (
    LayerStack,
    batches_of,
    clean_run,
    model_label,
    model_note,
    prompt_set_name,
    residual_nll,
)
from depthcurse.analyses.skip_effects import SkipArrays


def pruning_metrics(
    model: Any,
    prompts: Any,
    *,
    max_span: int | None = None,
    batch_size: int = 8,
    exclude_pos0: bool = True,
    skip_arrays: SkipArrays | None = None,
) -> pd.DataFrame:
    """Return block influence, angular distance and Δ NLL per layer as a tidy table.

    `max_span` caps n in d(l, n) (default ⌊L/2⌋). Rows have `metric`, `layer`,
    `span` (n for angular distance, else missing) and `value`. `skip_arrays`, from
    `skip_effect_arrays_by_part(model, prompts, removal_nll=True, ...)` on the same
    prompts, supplies the removed-layer NLL so that the removals do not run again.
    """
    if skip_arrays is not None and (skip_arrays.removal_nll is None or not exclude_pos0):
        raise ValueError(
            "skip_arrays must come from skip_effect_arrays_by_part(..., removal_nll=True), "
            "and reusing it needs exclude_pos0=True; pass skip_arrays=None otherwise"
        )
    cos_sum = cos_count = None
    angle_sums: dict[tuple[int, int], float] = {}
    nll_clean_sum, nll_removed_sum, n_scored, n_prompts = 0.0, None, 0, 0
    n_layers = 0
    for tokens, attention_mask in batches_of(prompts, batch_size):
        stack = LayerStack(model, tokens, attention_mask)
        n_layers = stack.n_layers
        span_limit = max_span if max_span is not None else n_layers // 2
        if cos_sum is None:
            cos_sum, cos_count = np.zeros(n_layers), 0
            nll_removed_sum = np.zeros(n_layers)
        clean = clean_run(stack, logits=False, mid=False)
        real = stack.attention_mask.bool()
        position_mask = real.clone()
        if exclude_pos0:
            position_mask[:, 0] = False
        resid = [h.float() for h in clean.resid]
        for layer in range(n_layers):
            cos = torch.nn.functional.cosine_similarity(resid[layer], resid[layer + 1], dim=-1)
            cos_sum[layer] += float(cos[position_mask].sum())
        cos_count += int(position_mask.sum())

        last = real.sum(-1) - 1
        rows = torch.arange(stack.batch, device=last.device)
        final_tokens = [h[rows, last] for h in resid]
        for span in range(1, span_limit + 1):
            for layer in range(n_layers - span + 1):
                cos = torch.nn.functional.cosine_similarity(
                    final_tokens[layer], final_tokens[layer + span], dim=-1
                )
                angle = torch.arccos(cos.clamp(-1.0, 1.0)) / torch.pi
                key = (layer, span)
                angle_sums[key] = angle_sums.get(key, 0.0) + float(angle.sum())
        n_prompts += stack.batch

        nll, scored = residual_nll(stack, clean.resid[-1], exclude_pos0=exclude_pos0)
        nll_clean_sum += float(nll.sum())
        n_scored += int(scored.sum())
        if skip_arrays is not None:
            continue
        keep_pos0 = torch.ones_like(real)
        keep_pos0[:, 0] = False
        where = keep_pos0[..., None]
        with torch.no_grad():
            for layer in range(n_layers):
                h = torch.where(where, clean.resid[layer], clean.resid[layer + 1])
                for later in range(layer + 1, n_layers):
                    h = stack.layer(later, h)[2]
                removed, _ = residual_nll(stack, h, exclude_pos0=exclude_pos0)
                nll_removed_sum[layer] += float(removed.sum())

    if skip_arrays is not None:
        if skip_arrays.n_layers != n_layers or skip_arrays.n_scored != n_scored:
            raise ValueError(
                f"skip_arrays cover {skip_arrays.n_layers} layers and {skip_arrays.n_scored} "
                f"scored positions, these prompts {n_layers} and {n_scored}; compute them on the "
                "same model and prompts"
            )
        nll_removed_sum = skip_arrays.removal_nll
    rows_out = []
    for layer in range(n_layers):
        influence = 1.0 - cos_sum[layer] / max(cos_count, 1)
        rows_out.append(("block_influence", layer, None, 0.5 if np.isnan(influence) else influence))
    for (layer, span), total in sorted(angle_sums.items(), key=lambda item: (item[0][1], item[0][0])):
        rows_out.append(("angular_distance", layer, span, total / n_prompts))
    for layer in range(n_layers):
        delta = (nll_removed_sum[layer] - nll_clean_sum) / max(n_scored, 1)
        rows_out.append(("delta_nll_remove", layer, None, delta))
    table = pd.DataFrame(rows_out, columns=["metric", "layer", "span", "value"])
    table["span"] = table["span"].astype("Int64")
    table.insert(0, "model", model_label(model))
    table.insert(1, "prompt_set", prompt_set_name(prompts))
    table["statistic"] = "mean"
    table["n_prompts"] = n_prompts
    table["n_layers"] = n_layers
    table["exclude_pos0"] = exclude_pos0
    table["note"] = model_note(model)
    return table
