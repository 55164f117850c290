"""Layer x layer cosine-similarity matrices of contributions, residuals and weights.

Three kinds of matrix, each with one row per (layer, other_layer) pair:

- `delta`: the token average of cos(Δ_i, Δ_j), with Δ_l = a_l + m_l the
  update layer l writes into the residual stream (h_{l+1} = h_l + a_l + m_l),
  over the selected tokens of all prompts (real tokens, position 0 excluded by
  default), in float32. Tokens where either vector has norm <= 1e-6 are left
  out of that pair's mean.
- `resid`: the same for the residuals h_l, l = 0..L (h_L the final residual).
- `weight`: cos(vec(W_i), vec(W_j)) of the flattened weights of one module
  type (W_Q, W_K, W_V, W_O, gate, up, down) in layers i and j.

Blocks that grew by copying one source layer show up as bright squares in the
weight matrices for as long as the copies stay close to their source.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from depthcurse.analyses.common import ZERO_NORM, Conventions, make_table

# Our names for each module, and the transformers Llama parameter name inside `model.layers.{l}`.
MODULES = {
    "W_Q": "self_attn.q_proj.weight",
    "W_K": "self_attn.k_proj.weight",
    "W_V": "self_attn.v_proj.weight",
    "W_O": "self_attn.o_proj.weight",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
}


TOKEN_CHUNK = 512
"""Tokens per step of the pairwise sums. One step's (tokens, layers, d_model) float32
tensor is 37 MB on smollm2."""


class PairCosineSum:
    """Sum over tokens of cos(x_i, x_j) for every pair of layers, with per-pair counts."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count: Tensor | None = None

    def add(self, vectors: list[Tensor]) -> None:
        stacked = torch.stack(vectors, dim=1).float()  # (tokens, layers, d_model)
        norms = stacked.norm(dim=-1, keepdim=True)
        valid = (norms > ZERO_NORM).float()
        unit = stacked / norms.clamp_min(ZERO_NORM) * valid
        total = torch.einsum("tid,tjd->ij", unit, unit).double()
        count = torch.einsum("tia,tja->ij", valid, valid).double()
        self.total = total if self.total is None else self.total + total
        self.count = count if self.count is None else self.count + count

    def matrix(self) -> Tensor:
        return self.total / self.count  # NaN where a pair never had two non-zero vectors


class SimilarityAccumulator:
    """Token-averaged layer x layer cosines of Δ_l = a_l + m_l and of h_l."""

    name = "layer_similarity"

    def __init__(self) -> None:
        self.delta = PairCosineSum()
        self.resid = PairCosineSum()

    def update(self, h: list[Tensor], a: list[Tensor], m: list[Tensor]) -> None:
        # The sums are over tokens, so chunks of tokens add up to the whole batch. Whole,
        # the stacked and normalised copies took 0.5 GiB (smollm2, 8 x 256 tokens).
        for start in range(0, h[0].shape[0], TOKEN_CHUNK):
            chunk = slice(start, start + TOKEN_CHUNK)
            self.delta.add([attn[chunk] + mlp[chunk] for attn, mlp in zip(a, m, strict=True)])
            self.resid.add([resid[chunk] for resid in h])

    def table(self, conventions: Conventions) -> pd.DataFrame:
        rows = matrix_rows(self.delta.matrix(), "delta", "cos(Δ_i, Δ_j), Δ_l = a_l + m_l")
        rows += matrix_rows(self.resid.matrix(), "resid", "cos(h_i, h_j)")
        for kind, pair_sum in (("delta", self.delta), ("resid", self.resid)):
            counts = pair_sum.count
            for row in rows:
                if row["metric"] == kind:
                    row["n_tokens"] = int(counts[row["layer"], row["other_layer"]])
        return make_table(rows, conventions, analysis=self.name)


def matrix_rows(matrix: Tensor, metric: str, formula: str) -> list[dict[str, Any]]:
    rows = []
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            rows.append(
                {
                    "layer": i,
                    "other_layer": j,
                    "metric": metric,
                    "statistic": "mean" if metric in ("delta", "resid") else "value",
                    "value": float(matrix[i, j]),
                    "formula": formula,
                }
            )
    return rows


# The same modules as attributes of a TransformerBridge block and of a DepthcurseLM block.
BRIDGE_MODULES = {
    "W_Q": "attn.q",
    "W_K": "attn.k",
    "W_V": "attn.v",
    "W_O": "attn.o",
    "gate": "mlp.gate",
    "up": "mlp.in",
    "down": "mlp.out",
}
DEPTHCURSE_MODULES = {
    "W_Q": "attn.q_proj",
    "W_K": "attn.k_proj",
    "W_V": "attn.v_proj",
    "W_O": "attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def layer_weights(model: Any) -> dict[str, list[Tensor]]:
    """Return each module's weight per layer, keyed by the names of `MODULES`.

    `model` is a `TransformerBridge`, a `DepthcurseLM`, a transformers Llama-style
    causal LM (`model.model.layers`), or a state dict with transformers' Llama names
    (`model.layers.{l}.self_attn.q_proj.weight`), as in a depthcurse checkpoint's
    `model.safetensors`.
    """
    if isinstance(model, dict):
        n_layers = 1 + max(
            (int(name.split(".")[2]) for name in model if name.startswith("model.layers.")),
            default=-1,
        )
        if n_layers == 0:
            raise ValueError(
                "state dict has no model.layers.{l}.* weights; pass one with transformers' Llama names"
            )
        return {
            module: [model[f"model.layers.{layer}.{suffix}"] for layer in range(n_layers)]
            for module, suffix in MODULES.items()
        }
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        inner = getattr(model, "model", None)
        layers = getattr(inner, "layers", None)
        if layers is None:
            raise TypeError(
                f"{type(model).__name__} has no blocks; pass a TransformerBridge, a DepthcurseLM, "
                "a transformers Llama-style causal LM or a state dict with transformers' Llama names"
            )
        return {
            module: [layer.get_parameter(suffix) for layer in layers]
            for module, suffix in MODULES.items()
        }
    names = BRIDGE_MODULES if hasattr(blocks[0].attn, "q") else DEPTHCURSE_MODULES
    return {
        module: [block.get_submodule(path).weight for block in blocks]
        for module, path in names.items()
    }


def weight_grams(model: Any, modules: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Return each module's layer x layer Gram matrix <vec(W_i), vec(W_j)>.

    The products are summed in float32 and returned as float64. `model` is
    anything `layer_weights` reads, and `modules` defaults to all of `MODULES`. Only one module's stacked float32 weights exist at a time (106 MB
    for smollm2's largest), and Gram matrices add up over modules, so the
    similarity of several modules' concatenated weights never concatenates them.
    """
    weights = layer_weights(model)
    grams = {}
    for module in MODULES if modules is None else modules:
        flat = torch.stack([w.detach().float().flatten() for w in weights[module]])
        grams[module] = (flat @ flat.T).double()
        del flat
    return grams


def gram_cosines(gram: Tensor) -> Tensor:
    """Return the cosine matrix of a Gram matrix. A zero vector's cosines are 0."""
    norms = gram.diagonal().clamp_min(0).sqrt().clamp_min(ZERO_NORM)
    return gram / norms[:, None] / norms[None, :]


def weight_similarity(model: Any, conventions: Conventions | None = None) -> pd.DataFrame:
    """Return layer x layer cosine similarities of each module's flattened weights.

    The products are float32 sums over each weight's entries; the cosines are
    taken from them in float64 (see `weight_grams`).
    """
    if conventions is None:
        conventions = Conventions.from_model(model, exclude_pos0=False, prepend_bos=None)
    rows = []
    for module, gram in weight_grams(model).items():
        cosines = gram_cosines(gram)
        rows += matrix_rows(cosines, module, f"cos(vec({module}_i), vec({module}_j))")
    table = make_table(rows, conventions, analysis="layer_similarity")
    table["n_tokens"] = 0
    return table


def layer_similarity(source: Any, prompts: Any = None, **options: Any) -> pd.DataFrame:
    """Return the `delta`, `resid` and per-module weight similarity matrices as one tidy table.

    `source` is a `StreamStats` from `collect_stream` (its model gives the
    weights), or a hooked model; then `prompts` is required and `options` go
    to `collect_stream`.
    """
    from depthcurse.analyses.stream import stats_for

    return stats_for(source, prompts, ("layer_similarity",), options).layer_similarity()
