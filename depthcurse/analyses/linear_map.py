"""Cross-model linear maps between residual streams (Csordás et al. 2025, arXiv 2505.13898).

On shared text, let x_i ∈ R^{d_A} be model A's residual entering layer i
(i = 0..L_A, i = L_A the input to the final norm) and y_j ∈ R^{d_B} model B's
at layer j. For every source layer i a ridge least-squares map with bias is fit
on the training tokens, for all target layers at once:

    W_i = argmin_W Σ_t ‖(x_{i,t} − x̄_i) W − (y_{j,t} − ȳ_j)‖² + λ ‖W‖²_F,
    λ = ridge · tr(X_iᵀ X_i) / d_A   (X_i centred),

solved in float64, and scored on held-out tokens by the mean relative error

    E[i, j] = mean_t ‖ŷ_{j,t} − y_{j,t}‖ / max(‖y_{j,t}‖, 1e-6).

The paper trains a linear layer by AdamW; the closed-form ridge fit minimises
the same squared error. Models may differ in depth and width; both read the
same token ids, so they must share a tokenizer. Position 0 and padding are left
out; tokens are split into train and held-out sets by a seeded permutation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from depthcurse.analyses.engine import (
    LayerStack,
    batches_of,
    clean_run,
    hf_model_of,
    model_label,
    prompt_set_name,
)


def residual_streams(
    model: Any, prompts: Any, *, batch_size: int = 8, exclude_pos0: bool = True
) -> list[Float[Tensor, "tokens d_model"]]:
    """Return the residual entering each layer and the final norm, over real tokens (float32)."""
    per_layer: list[list[Tensor]] = []
    vocab = int(hf_model_of(model).config.vocab_size)
    for tokens, attention_mask in batches_of(prompts, batch_size):
        if int(tokens.max()) >= vocab:
            raise ValueError(
                f"token id {int(tokens.max())} is outside the vocabulary of {model_label(model)} "
                f"({vocab}); both models must share a tokenizer"
            )
        stack = LayerStack(model, tokens, attention_mask)
        mask = stack.attention_mask.bool().clone()
        if exclude_pos0:
            mask[:, 0] = False
        clean = clean_run(stack, logits=False, mid=False)
        if not per_layer:
            per_layer = [[] for _ in clean.resid]
        for index, h in enumerate(clean.resid):
            per_layer[index].append(h[mask].float().cpu())
    return [torch.cat(chunks) for chunks in per_layer]


def ridge_fit(
    x: Float[Tensor, "tokens d_in"], y: Float[Tensor, "tokens d_out"], ridge: float = 1e-3
) -> tuple[Float[Tensor, "d_in d_out"], Float[Tensor, " d_out"]]:
    """Return (weight, bias) of the ridge fit y ≈ x @ weight + bias, solved in float64.

    The penalty is ridge · tr(X_cᵀ X_c) / d_in, with X_c the centred inputs, and
    the bias is not penalised. The penalty is floored at 1e-12, so constant
    inputs still give a solution.
    """
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    centred = x - x_mean
    gram = centred.T @ centred
    penalty = max(ridge * float(torch.trace(gram)) / gram.shape[0], 1e-12)
    gram = gram + penalty * torch.eye(gram.shape[0], dtype=gram.dtype)
    weight = torch.linalg.solve(gram, centred.T @ (y - y_mean))
    return weight, y_mean - x_mean @ weight


def fit_linear_maps(
    sources: Sequence[Tensor],
    targets: Sequence[Tensor],
    *,
    train_fraction: float = 0.8,
    ridge: float = 1e-3,
    seed: int = 0,
) -> np.ndarray:
    """Return held-out relative errors E[i, j] of ridge maps from sources[i] to targets[j]."""
    n_tokens = sources[0].shape[0]
    if any(t.shape[0] != n_tokens for t in [*sources, *targets]):
        raise ValueError("every source and target needs the same number of tokens (rows)")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n_tokens))
    n_train = int(round(train_fraction * n_tokens))
    if n_train < 2 or n_tokens - n_train < 1:
        raise ValueError(f"{n_tokens} tokens are too few to split into train and held-out sets")
    train, held_out = order[:n_train], order[n_train:]

    y_all = torch.cat([t.double() for t in targets], dim=1)
    widths = [t.shape[1] for t in targets]
    y_train = y_all[train]

    errors = np.zeros((len(sources), len(targets)))
    for i, source in enumerate(sources):
        x = source.double()
        weight, bias = ridge_fit(x[train], y_train, ridge)
        prediction = x[held_out] @ weight + bias
        for j, (pred, true) in enumerate(
            zip(prediction.split(widths, dim=1), y_all[held_out].split(widths, dim=1), strict=True)
        ):
            error = (pred - true).norm(dim=1) / true.norm(dim=1).clamp_min(1e-6)
            errors[i, j] = float(error.mean())
    return errors


def linear_map(
    model_a: Any,
    model_b: Any,
    prompts: Any,
    *,
    train_fraction: float = 0.8,
    ridge: float = 1e-3,
    seed: int = 0,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Return the relative-error matrix of linear maps from model A's layers to model B's."""
    sources = residual_streams(model_a, prompts, batch_size=batch_size)
    targets = residual_streams(model_b, prompts, batch_size=batch_size)
    errors = fit_linear_maps(
        sources, targets, train_fraction=train_fraction, ridge=ridge, seed=seed
    )
    depth_a, depth_b = len(sources) - 1, len(targets) - 1
    rows = [
        (i, j, i / depth_a, j / depth_b, float(errors[i, j]))
        for i in range(len(sources))
        for j in range(len(targets))
    ]
    table = pd.DataFrame(
        rows,
        columns=["source_layer", "target_layer", "source_depth", "target_depth", "value"],
    )
    table.insert(0, "source_model", model_label(model_a))
    table.insert(1, "target_model", model_label(model_b))
    table.insert(2, "prompt_set", prompt_set_name(prompts))
    table["metric"] = "relative_error"
    table["statistic"] = "mean"
    table["ridge"] = ridge
    table["n_tokens"] = sources[0].shape[0]
    table["exclude_pos0"] = True
    return table
