"""Layer-skip effects on later layers and on the output (Csordás et al. 2025, arXiv 2505.13898).

Skipping layer s sets its output equal to its input at the intervened positions
(Δ_s = 0, with Δ_l = h_{l+1} − h_l the contribution of layer l and h_l its
input). Part "attn" or "mlp" zeroes only that sublayer's output. For every later
layer j > s and every measured position,

    E[s, j] = ‖Δ_j^clean − Δ_j^skip‖₂ / max(‖Δ_j^clean‖₂, 1e-6),

and the output effect is O[s] = ‖p^skip − p^clean‖₂, the L2 norm of the
difference of the next-token distributions p = softmax(logits) (not a KL).

Modes:
- current: skip at positions 1..n−1 and measure at positions 1..n−1. Position 0
  is never skipped, and causal attention leaves it unchanged, so it is left out
  of the measure (`exclude_pos0=True`).
- future: for each t of a seeded set per prompt (by default 4 draws from
  range(8, n − 4, 8)), skip at positions 1..t−1 and measure at positions t..n−1.
  This isolates how later tokens use the computation of earlier ones. With
  `future_at="answer"`, t is instead each prompt's answer start (the
  `answer_start` label of generated task prompts), one t per prompt, as
  Csordás et al. do for multi-hop questions.

Per prompt, values are reduced over measured positions and then over t by
`reduction` (max, or mean); the table reports the max and the mean over prompts
in the `statistic` column. Entries with j ≤ s are not defined and are absent.

Local (direct-path) variant: layer j > s reads h_j^clean − Δ_s^clean at the
intervened positions, so only the direct contribution of s is removed and
nothing propagates; the output effect uses h_L^clean − Δ_s^clean. With part
"attn" or "mlp" the removed contribution is that sublayer's output.

Engines: "prefix" starts each skipped run at layer s + 1 from the clean run's
cached residuals and stacks several skipped runs along the batch dimension;
it needs Σ_s (L − 1 − s) layer applications per sequence after the clean run,
about half of the naive count. "naive" runs one full hooked forward of the
`TransformerBridge` per skipped layer and t; it is the reference for tests and
the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from depthcurse.analyses.engine import (
    CleanRun,
    LayerStack,
    batches_of,
    clean_run,
    model_label,
    model_note,
    prediction_mask,
    prompt_set_name,
    quiet_nan_warnings,
)
from depthcurse.analyses.surgery import PARTS, skipped
from depthcurse.hardware import release_free_memory

MODES = ("current", "future")
FUTURE_AT = ("grid", "answer")
REDUCTIONS = ("max", "mean")
ENGINES = ("prefix", "naive")
NORM_FLOOR = 1e-6
LOGIT_BUDGET = 2**24
UNEMBED_ROWS = 256
"""Positions unembedded at once for the output effect: 256 x 49,152 float32 logits
(smollm2's vocabulary) are 48 MiB per vocab-wide tensor. In the suite's reused heap,
512 positions took about 5% less CPU time but peaked 0.35 GiB higher on 8 x 256 tokens."""


@dataclass
class SkipArrays:
    """Per-prompt skip effects before the reduction over prompts.

    `effect[p, s, j]` is E[s, j] for prompt p (NaN where j ≤ s), `output[p, s]`
    the output effect; both already reduced over positions and t.
    """

    effect: np.ndarray
    output: np.ndarray
    layer_forwards: float
    n_layers: int
    removal_nll: np.ndarray | None = None
    """Per skipped layer s, the next-token NLL (nats) summed over all scored positions of
    all prompts (next token real, position 0 excluded) with Δ_s = 0 at positions 1..n−1:
    the NLL of removing layer s. Present for part "layer" in current mode only, on request."""
    n_scored: int = 0
    """Number of scored positions behind `removal_nll`."""


def future_positions(
    length: int, n_positions: int, rng: np.random.Generator, start: int, stride: int, margin: int
) -> list[int]:
    """Draw up to `n_positions` intervention positions t from range(start, length − margin, stride)."""
    candidates = list(range(start, length - margin, stride))
    if not candidates:
        raise ValueError(
            f"a prompt of {length} tokens has no future-mode position in "
            f"range({start}, {length} - {margin}, {stride}); use longer prompts or lower "
            "position_start / position_margin"
        )
    chosen = rng.choice(len(candidates), size=min(n_positions, len(candidates)), replace=False)
    return sorted(candidates[i] for i in chosen)


def answer_starts(prompts: Any) -> list[int]:
    """Return each prompt's `answer_start` label, checked to leave positions on both sides."""
    fix = "Generated task prompts carry it. Use future_at='grid' for other text."
    if not hasattr(prompts, "prompts"):
        raise ValueError(f"future_at='answer' needs a PromptSet with 'answer_start' labels. {fix}")
    missing = [p.name for p in prompts.prompts if "answer_start" not in p.labels]
    if missing:
        raise ValueError(
            f"prompts {', '.join(missing[:3])} have no 'answer_start' label, which "
            f"future_at='answer' needs. {fix}"
        )
    starts = []
    for prompt in prompts.prompts:
        t = int(prompt.labels["answer_start"])
        if not 2 <= t < len(prompt.token_ids):
            raise ValueError(
                f"prompt {prompt.name!r} has answer_start {t} for {len(prompt.token_ids)} tokens; "
                "future mode needs 2 <= answer_start < length (a skipped position before it "
                "and an answer token at or after it)"
            )
        starts.append(t)
    return starts


def _masks(
    attention_mask: Tensor,
    mode: str,
    rng: np.random.Generator,
    n_positions: int,
    position_grid: tuple[int, int, int],
    starts: list[int] | None = None,
) -> tuple[Bool[Tensor, "k batch pos"], Bool[Tensor, "k batch pos"]]:
    """Return (skip positions, measured positions) for each of the k variants of the batch.

    `starts` (future mode) gives one t per row instead of the seeded grid draws.
    """
    real = attention_mask.bool()
    batch, width = real.shape
    index = torch.arange(width)
    if mode == "current":
        mask = real & (index >= 1)
        return mask[None], mask[None]
    if starts is not None:
        t = torch.tensor(starts)[:, None]
        return ((index >= 1) & (index < t))[None], ((index >= t) & real)[None]
    start, stride, margin = position_grid
    skip = torch.zeros((n_positions, batch, width), dtype=torch.bool)
    measure = torch.zeros_like(skip)
    for row in range(batch):
        length = int(real[row].sum())
        for k, t in enumerate(future_positions(length, n_positions, rng, start, stride, margin)):
            skip[k, row] = (index >= 1) & (index < t)
            measure[k, row] = (index >= t) & real[row]
    return skip, measure


def _reduce(values: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """Reduce over the last (position) axis inside `mask`; NaN where the mask is empty."""
    count = mask.sum(-1)
    if reduction == "max":
        reduced = values.masked_fill(~mask, float("-inf")).amax(-1)
    else:
        reduced = (values * mask).sum(-1) / count.clamp_min(1)
    return reduced.masked_fill(count == 0, float("nan"))


def _relative_change(
    delta: Float[Tensor, "n batch pos d"], clean_delta: Float[Tensor, "batch pos d"]
) -> Float[Tensor, "n batch pos"]:
    floor = clean_delta.norm(dim=-1).clamp_min(NORM_FLOOR)
    return (delta.float() - clean_delta).norm(dim=-1) / floor


@dataclass
class CleanProbabilities:
    """softmax(clean logits) in float32, kept only at the positions some variant measures."""

    rows: Float[Tensor, "n vocab"]
    slot: Tensor
    """(batch, pos) index of each position's row in `rows`, −1 where nothing is measured."""

    @classmethod
    def at_positions(
        cls, stack: LayerStack, clean: CleanRun, positions: Bool[Tensor, "batch pos"]
    ) -> CleanProbabilities:
        """Unembed the clean final residual at `positions`, UNEMBED_ROWS positions at a time.

        No vocabulary-wide tensor of the whole batch is made: at 8 x 256 tokens of
        smollm2 the clean logits and probabilities were 384 MiB each.
        """
        final = clean.resid[-1]
        batch_index, pos_index = positions.to(final.device).nonzero(as_tuple=True)
        slot = torch.full(positions.shape, -1, dtype=torch.long, device=final.device)
        slot[batch_index, pos_index] = torch.arange(len(batch_index), device=final.device)
        rows: Tensor | None = None
        with torch.no_grad():
            for begin in range(0, len(batch_index), UNEMBED_ROWS):
                part = slice(begin, begin + UNEMBED_ROWS)
                logits = stack.logits(final[batch_index[part], pos_index[part]])
                probs = torch.softmax(logits.float(), dim=-1)
                if rows is None:
                    rows = probs.new_empty((len(batch_index), probs.shape[-1]))
                rows[part] = probs
        if rows is None:
            vocab = stack.logits(final[:1, :1]).shape[-1]
            rows = torch.empty((0, vocab), device=final.device)
        return cls(rows, slot)

    def at(self, row: Tensor, pos: Tensor) -> Tensor:
        return self.rows[self.slot[row, pos]]


def _output_change(logits: Tensor, clean_probs: Tensor, rows: int) -> Tensor:
    probs = torch.softmax(logits.float(), dim=-1).unflatten(0, (rows, -1))
    return probs.sub_(clean_probs).norm(dim=-1)


def _part_delta(clean: CleanRun, layer: int, part: str) -> Tensor:
    if part == "attn":
        return clean.mid[layer] - clean.resid[layer]
    if part == "mlp":
        return clean.resid[layer + 1] - clean.mid[layer]
    return clean.resid[layer + 1] - clean.resid[layer]


def _skip_entry(stack: LayerStack, clean: CleanRun, s: int, part: str, skip: Tensor) -> Tensor:
    """Residual after a skipped layer s: its input where skipped, the clean output elsewhere."""
    where = skip[..., None].to(clean.resid[s].device)
    if part == "layer":
        return torch.where(where, clean.resid[s], clean.resid[s + 1])
    if part == "mlp":
        return torch.where(where, clean.mid[s], clean.resid[s + 1])
    mid = torch.where(where, clean.resid[s], clean.mid[s])
    return mid + stack.mlp(s, mid)


def _prefix_batch(
    stack: LayerStack,
    clean: CleanRun,
    part: str,
    local: bool,
    skip: Tensor,
    measure: Tensor,
    reduction: str,
    max_rows: int,
    clean_probs: CleanProbabilities,
    removal_nll: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Compute one batch's effects with the prefix engine.

    `clean_probs` holds softmax(clean logits) at every measured position. With
    `removal_nll` (float64, one entry per layer), also add each skipped run's next-token
    NLL summed over the scored positions, read from the same logits.
    """
    n_layers, batch = stack.n_layers, stack.batch
    n_k = skip.shape[0]
    device = clean_probs.rows.device
    skip, measure = skip.to(device), measure.to(device)
    effect = torch.full((n_k, n_layers, n_layers, batch), float("nan"))
    output = torch.full((n_k, n_layers, batch), float("nan"))
    clean_deltas = [clean.delta(j).float() for j in range(n_layers)]
    variants = [(s, k) for s in range(n_layers) for k in range(n_k)]
    per_forward = max(1, max_rows // batch)

    def record(j: int, chunk: list[tuple[int, int]], inputs: Tensor, outputs: Tensor) -> None:
        deltas = (outputs.float() - inputs.float()).unflatten(0, (len(chunk), -1))
        change = _relative_change(deltas, clean_deltas[j])
        reduced = _reduce(change, measure[[k for _, k in chunk]], reduction)
        for row, (s, k) in enumerate(chunk):
            effect[k, s, j] = reduced[row].cpu()

    # Logits are batch × pos × vocab per run. Stacking many runs costs more in memory
    # traffic than it saves, so one unembedding call makes at most LOGIT_BUDGET logits.
    vocab = clean_probs.rows.shape[-1]
    per_logits = max(1, min(per_forward, LOGIT_BUDGET // stack.tokens.numel() // vocab))

    if removal_nll is not None:
        next_tokens = torch.zeros_like(stack.tokens)
        next_tokens[:, :-1] = stack.tokens[:, 1:]
        scored = prediction_mask(stack.attention_mask, exclude_pos0=True)

    def finish(chunk: list[tuple[int, int]], finals: list[Tensor]) -> None:
        # Only measured positions are unembedded (in future mode about half of them), in
        # slices of UNEMBED_ROWS positions so that no vocab-wide tensor outgrows one slice.
        for start in range(0, len(chunk), per_logits):
            part_chunk = chunk[start : start + per_logits]
            masks = measure[[k for _, k in part_chunk]]
            selected = torch.cat(finals[start : start + per_logits]).unflatten(0, masks.shape[:2])
            change = torch.zeros(masks.shape, device=device)
            nll = torch.zeros(masks.shape, device=device)
            where = masks.nonzero(as_tuple=True)
            for begin in range(0, where[0].numel(), UNEMBED_ROWS):
                run, row, pos = (index[begin : begin + UNEMBED_ROWS] for index in where)
                logits = stack.logits(selected[run, row, pos]).float()
                # softmax by hand, so that the removal NLL reads log Z = m + log Σ exp(z − m)
                # instead of a second pass of log_softmax over the vocabulary.
                peak = logits.amax(-1, keepdim=True)
                probs = torch.exp(logits - peak)
                total = probs.sum(-1, keepdim=True)
                if removal_nll is not None:
                    picked = logits.gather(-1, next_tokens[row, pos][:, None])
                    log_z = peak + total.log()
                    nll[run, row, pos] = (log_z - picked)[:, 0] * scored[row, pos]
                del logits
                probs.div_(total)
                change[run, row, pos] = probs.sub_(clean_probs.at(row, pos)).norm(dim=-1)
            reduced = _reduce(change, masks, reduction)
            for index, (s, k) in enumerate(part_chunk):
                output[k, s] = reduced[index].cpu()
                if removal_nll is not None:
                    removal_nll[s] += float(nll[index].sum())

    with torch.no_grad():
        if local:
            for j in range(1, n_layers):
                earlier = [(s, k) for s, k in variants if s < j]
                for start in range(0, len(earlier), per_forward):
                    chunk = earlier[start : start + per_forward]
                    inputs = torch.cat([_local_input(clean, j, s, part, skip[k]) for s, k in chunk])
                    _, _, outputs = stack.layer(j, inputs)
                    record(j, chunk, inputs, outputs)
            finals = [_local_input(clean, n_layers, s, part, skip[k]) for s, k in variants]
            finish(variants, finals)
            return effect, output

        for start in range(0, len(variants), per_forward):
            chunk = variants[start : start + per_forward]
            active: list[tuple[tuple[int, int], Tensor]] = []
            for j in range(chunk[0][0] + 1, n_layers + 1):
                for s, k in chunk:
                    if s == j - 1:
                        active.append(((s, k), _skip_entry(stack, clean, s, part, skip[k])))
                if j == n_layers or not active:
                    continue
                inputs = torch.cat([h for _, h in active])
                _, _, outputs = stack.layer(j, inputs)
                record(j, [v for v, _ in active], inputs, outputs)
                active = [(v, h) for (v, _), h in zip(active, outputs.split(batch), strict=True)]
            finish([v for v, _ in active], [h for _, h in active])
    return effect, output


def _local_input(clean: CleanRun, j: int, s: int, part: str, skip: Tensor) -> Tensor:
    removed = _part_delta(clean, s, part) * skip[..., None].to(clean.resid[j].dtype)
    return clean.resid[j] - removed


def _naive_batch(
    model: Any,
    stack: LayerStack,
    clean: CleanRun,
    part: str,
    local: bool,
    skip: Tensor,
    measure: Tensor,
    reduction: str,
    clean_probs: Tensor,
) -> tuple[Tensor, Tensor]:
    """Compute the effects with one full hooked bridge forward per (skipped layer, t)."""
    if not hasattr(model, "hooks"):
        raise TypeError("the naive engine needs a TransformerBridge; load the model with depthcurse.load")
    n_layers, batch = stack.n_layers, stack.batch
    n_k = skip.shape[0]
    effect = torch.full((n_k, n_layers, n_layers, batch), float("nan"))
    output = torch.full((n_k, n_layers, batch), float("nan"))
    device = clean_probs.device
    for s in range(n_layers):
        for k in range(n_k):
            mask_k = skip[k].to(device)
            seen, logits = _naive_run(model, stack, clean, s, part, local, mask_k)
            stack.layer_forwards += n_layers * batch
            for j in range(s + 1, n_layers):
                post, pre = seen[f"blocks.{j}.hook_resid_post"], seen[f"blocks.{j}.hook_resid_pre"]
                delta = post.float() - pre.float()
                change = _relative_change(delta[None], clean.delta(j).float())
                effect[k, s, j] = _reduce(change, measure[k : k + 1].to(device), reduction)[0].cpu()
            change = _output_change(logits, clean_probs, 1)
            output[k, s] = _reduce(change, measure[k : k + 1].to(device), reduction)[0].cpu()
    return effect, output


def _naive_run(
    model: Any, stack: LayerStack, clean: CleanRun, s: int, part: str, local: bool, skip: Tensor
) -> tuple[dict[str, Tensor], Tensor]:
    """Run one full hooked forward with layer s skipped (or its direct path removed)."""
    n_layers = stack.n_layers
    seen: dict[str, Tensor] = {}

    # Hook callbacks are keyed by our own labels: the bridge reports aliased
    # hook points under their canonical names (blocks.j.hook_in, ...).
    def store(key: str) -> Any:
        def hook(tensor: Tensor, hook: Any) -> Tensor:
            seen[key] = tensor
            return tensor

        return hook

    def replace_input(key: str, j: int) -> Any:
        def hook(tensor: Tensor, hook: Any) -> Tensor:
            seen[key] = _local_input(clean, j, s, part, skip)
            return seen[key]

        return hook

    hooks = []
    for j in range(n_layers):
        pre, post = f"blocks.{j}.hook_resid_pre", f"blocks.{j}.hook_resid_post"
        hook_pre = replace_input(pre, j) if local and j > s else store(pre)
        hooks += [(pre, hook_pre), (post, store(post))]
    if local:
        hooks.append(("ln_final.hook_in", replace_input("final", n_layers)))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        if local:
            logits = model(stack.tokens, attention_mask=stack.attention_mask)
        else:
            with skipped(model, s, part, skip):
                logits = model(stack.tokens, attention_mask=stack.attention_mask)
    return seen, logits


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def skip_effect_arrays(
    model: Any,
    prompts: Any,
    *,
    part: str = "layer",
    mode: str = "current",
    reduction: str = "max",
    local: bool = False,
    n_positions: int = 4,
    position_grid: tuple[int, int, int] = (8, 8, 4),
    future_at: str = "grid",
    seed: int = 123,
    engine: str = "prefix",
    batch_size: int = 8,
    max_rows: int = 16,
    progress: bool = True,
) -> SkipArrays:
    """Compute per-prompt skip effects (see the module docstring for the formulas).

    `position_grid` is (start, stride, margin) of the future-mode positions, and
    `future_at="answer"` uses each prompt's answer start instead (see the module docstring);
    `max_rows` caps how many sequences one stacked layer forward holds; `progress`
    shows a progress bar over batches on stderr.
    """
    _check_choice("part", part, PARTS)
    return skip_effect_arrays_by_part(
        model,
        prompts,
        parts=(part,),
        mode=mode,
        reduction=reduction,
        local=local,
        n_positions=n_positions,
        position_grid=position_grid,
        future_at=future_at,
        seed=seed,
        engine=engine,
        batch_size=batch_size,
        max_rows=max_rows,
        progress=progress,
    )[part]


def skip_effect_arrays_by_part(
    model: Any,
    prompts: Any,
    *,
    parts: tuple[str, ...] = PARTS,
    mode: str = "current",
    reduction: str = "max",
    local: bool = False,
    n_positions: int = 4,
    position_grid: tuple[int, int, int] = (8, 8, 4),
    future_at: str = "grid",
    seed: int = 123,
    engine: str = "prefix",
    batch_size: int = 8,
    max_rows: int = 16,
    progress: bool = True,
    removal_nll: bool = False,
) -> dict[str, SkipArrays]:
    """Compute `skip_effect_arrays` for several parts, sharing each batch's clean run.

    The arrays equal separate `skip_effect_arrays` calls, because every part gets the
    same future-mode positions, drawn from `seed` once per batch.
    Each part's `layer_forwards` includes the shared clean run, as if it ran alone.
    `removal_nll=True` also fills `SkipArrays.removal_nll` of part "layer" from the
    skipped runs' logits (prefix engine, current mode, not local), which
    `pruning_metrics` can reuse instead of running every removal again.
    """
    for part in parts:
        _check_choice("part", part, PARTS)
    _check_choice("mode", mode, MODES)
    _check_choice("reduction", reduction, REDUCTIONS)
    _check_choice("engine", engine, ENGINES)
    _check_choice("future_at", future_at, FUTURE_AT)
    starts = answer_starts(prompts) if mode == "future" and future_at == "answer" else None
    if removal_nll and (
        "layer" not in parts or mode != "current" or local or engine != "prefix"
    ):
        raise ValueError(
            "removal_nll=True needs part 'layer' in parts, mode='current', local=False and "
            f"engine='prefix'; got parts={parts}, mode={mode!r}, local={local}, engine={engine!r}"
        )
    rng = np.random.default_rng(seed)
    effects: dict[str, list[np.ndarray]] = {part: [] for part in parts}
    outputs: dict[str, list[np.ndarray]] = {part: [] for part in parts}
    forwards = dict.fromkeys(parts, 0.0)
    n_layers, n_scored = 0, 0
    removal_totals: Tensor | None = None
    batches = batches_of(prompts, batch_size)
    description = f"skip effects ({','.join(parts)}, {mode}{', local' if local else ''})"
    # Reduce over the t variants (axis 0) the same way as over positions.
    reduce = np.nanmax if reduction == "max" else np.nanmean
    row = 0
    for tokens, attention_mask in tqdm(batches, desc=description, disable=not progress):
        stack = LayerStack(model, tokens, attention_mask)
        n_layers = stack.n_layers
        rows = None if starts is None else starts[row : row + len(tokens)]
        row += len(tokens)
        skip, measure = _masks(attention_mask, mode, rng, n_positions, position_grid, rows)
        # Every part compares with the clean distribution only, and only at the measured
        # positions: the prefix engine keeps p there, without the clean logits.
        if engine == "prefix":
            clean = clean_run(stack, logits=False)
            clean_probs: Any = CleanProbabilities.at_positions(stack, clean, measure.any(0))
        else:
            clean = clean_run(stack)
            clean_probs = torch.softmax(clean.logits.float(), dim=-1)
            clean.logits = None
        clean_forwards = stack.layer_forwards
        if removal_nll:
            if removal_totals is None:
                removal_totals = torch.zeros(n_layers, dtype=torch.float64)
            n_scored += int(prediction_mask(stack.attention_mask, exclude_pos0=True).sum())
        for part in parts:
            stack.layer_forwards = 0.0
            if engine == "prefix":
                effect, output = _prefix_batch(
                    stack, clean, part, local, skip, measure, reduction, max_rows,
                    clean_probs, removal_totals if part == "layer" else None,
                )
            else:
                effect, output = _naive_batch(
                    model, stack, clean, part, local, skip, measure, reduction, clean_probs
                )
            forwards[part] += clean_forwards + stack.layer_forwards
            with quiet_nan_warnings():
                effects[part].append(np.moveaxis(reduce(effect.numpy(), axis=0), -1, 0))
                outputs[part].append(np.moveaxis(reduce(output.numpy(), axis=0), -1, 0))
        del clean, clean_probs
        release_free_memory()
    result = {
        part: SkipArrays(
            np.concatenate(effects[part]), np.concatenate(outputs[part]), forwards[part], n_layers
        )
        for part in parts
    }
    if removal_totals is not None:
        result["layer"].removal_nll = removal_totals.numpy()
        result["layer"].n_scored = n_scored
    return result


def skip_effects(
    model: Any,
    prompts: Any,
    *,
    parts: tuple[str, ...] | str = ("layer",),
    mode: str = "current",
    reduction: str = "max",
    local: bool = False,
    n_positions: int = 4,
    position_grid: tuple[int, int, int] = (8, 8, 4),
    future_at: str = "grid",
    seed: int = 123,
    engine: str = "prefix",
    batch_size: int = 8,
    max_rows: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """Return the skip-effect matrix and output effects as a tidy table.

    One row per part × skipped layer × later layer (metric "relative_change") or
    per part × skipped layer (metric "output_change", `layer` missing) × statistic
    over prompts ("max", "mean").
    """
    parts = (parts,) if isinstance(parts, str) else tuple(parts)
    by_part = skip_effect_arrays_by_part(
        model,
        prompts,
        parts=parts,
        mode=mode,
        reduction=reduction,
        local=local,
        n_positions=n_positions,
        position_grid=position_grid,
        future_at=future_at,
        seed=seed,
        engine=engine,
        batch_size=batch_size,
        max_rows=max_rows,
        progress=progress,
    )
    return skip_effects_from_arrays(
        model, prompts, by_part, mode=mode, reduction=reduction, local=local, engine=engine,
        future_at=future_at,
    )


def skip_effects_from_arrays(
    model: Any,
    prompts: Any,
    by_part: dict[str, SkipArrays],
    *,
    mode: str,
    reduction: str = "max",
    local: bool = False,
    engine: str = "prefix",
    future_at: str = "grid",
) -> pd.DataFrame:
    """Return the `skip_effects` table of arrays already computed on `model` and `prompts`.

    The keyword arguments must be those the arrays were computed with: they only
    fill the table's columns.
    """
    frames = [skip_table(arrays, part=part) for part, arrays in by_part.items()]
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, "model", model_label(model))
    table.insert(1, "prompt_set", prompt_set_name(prompts))
    table["mode"] = mode
    table["future_at"] = future_at if mode == "future" else None
    table["variant"] = "local" if local else "skip"
    table["reduction"] = reduction
    table["exclude_pos0"] = True
    table["engine"] = engine
    table["note"] = model_note(model)
    return table


def skip_table(arrays: SkipArrays, *, part: str) -> pd.DataFrame:
    """Reduce per-prompt arrays over prompts (max and mean) into long-format rows."""
    rows = []
    n_layers = arrays.n_layers
    for statistic, reduce in (("max", np.nanmax), ("mean", np.nanmean)):
        with quiet_nan_warnings():
            effect = reduce(arrays.effect, axis=0)
            output = reduce(arrays.output, axis=0)
        for s in range(n_layers):
            for j in range(s + 1, n_layers):
                rows.append((part, s, j, "relative_change", statistic, float(effect[s, j])))
            rows.append((part, s, None, "output_change", statistic, float(output[s])))
    table = pd.DataFrame(rows, columns=["part", "skip_layer", "layer", "metric", "statistic", "value"])
    table["layer"] = table["layer"].astype("Int64")
    table["n_prompts"] = arrays.effect.shape[0]
    return table
