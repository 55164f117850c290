"""Layer-by-layer execution of a hooked model, shared by the intervention analyses.

`LayerStack` reaches into a `TransformerBridge` (or a plain transformers causal LM
with the Llama layout: `model.embed_tokens`, `model.rotary_emb`, `model.layers`,
`model.norm`, `lm_head`) and runs one decoder layer at a time on any residual
stream, returning the attention and MLP outputs separately. Analyses use it to
start a forward pass at layer s from a cached clean residual instead of
recomputing layers 0..s-1, and to stack several interventions along the batch
dimension.

A pre-norm decoder layer computes, with h its input (the residual stream):

    a = attn(ln1(h)),   mid = h + a,   m = mlp(ln2(mid)),   out = mid + m,

and its contribution is Δ = out − h. The bridge's attention and MLP modules are
called directly, so the numbers match `bridge(tokens)` up to float rounding.
The bridge's attention wrapper computes eager attention itself (to fire its
score and pattern hooks), materialising every batch × head × query × key score.
Unless a caller requests eager attention, the engine calls the transformers attention module
inside the wrapper instead, switched to PyTorch's fused
`scaled_dot_product_attention` ("sdpa") for the duration of the call; on CPU its
flash kernel ran a smollm2 attention over 16 x 256 tokens in 17.8 ms, against
54.6 ms for the unfused math kernel.

All metrics are computed in float32 whatever the model dtype.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn


class ArchitectureError(TypeError):
    """A model does not have the pre-norm decoder-layer layout the engine runs."""


_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
ENGINE_ATTENTION = "sdpa"
"""Attention implementation of the engine's layer calls when the model's is eager."""


def engine_attention(config: Any) -> str:
    """Return the attention implementation the engine runs `config`'s layers with.

    Eager attention (what hooked models load with) becomes "sdpa"; any other choice,
    such as flash attention on a GPU, is kept.
    """
    current = getattr(config, "_attn_implementation", None)
    return ENGINE_ATTENTION if current in (None, "eager") else current


@contextmanager
def attention_implementation(config: Any, name: str) -> Iterator[None]:
    """Set `config._attn_implementation` to `name` inside the block, then restore it.

    The attention modules read the setting at every call, so the bridge's own forward
    passes outside the block still use the implementation it was loaded with.
    """
    previous = getattr(config, "_attn_implementation", None)
    if previous == name:
        yield
        return
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


def hf_model_of(model: Any) -> nn.Module:
    """Return the transformers causal LM inside a `TransformerBridge` (or `model` itself)."""
    hf = getattr(model, "original_model", model)
    if not (hasattr(hf, "model") and hasattr(hf, "lm_head")):
        raise ArchitectureError(
            f"{type(model).__name__} is neither a TransformerBridge nor a transformers causal LM "
            "with .model and .lm_head; load it with depthcurse.load(...)"
        )
    return hf


def decoder_layers(model: Any) -> nn.ModuleList:
    """Return the module list the forward pass iterates over (the bridge's `blocks`)."""
    return hf_model_of(model).model.layers


def unwrap_layer(block: nn.Module) -> nn.Module:
    """Return the transformers decoder layer inside a bridge `BlockBridge`."""
    layer = getattr(block, "original_component", None) or block
    missing = [name for name in _LAYER_PARTS if not hasattr(layer, name)]
    if missing:
        raise ArchitectureError(
            f"decoder layer {type(layer).__name__} lacks {missing}; the intervention engine "
            "supports pre-norm Llama-style layers (Llama, SmolLM2, depthcurse checkpoints)"
        )
    return layer


def model_label(model: Any) -> str:
    """Return the model's short label for the `model` column of tables.

    A model from `depthcurse.load` gets `depthcurse.sources.checkpoint_label`
    of its source: the run name for a run's final checkpoint, ``RUN/step-N``
    for an earlier one, else the folder, file or bundled model name.
    """
    from depthcurse.sources import checkpoint_label

    info = getattr(model, "depthcurse_info", None)
    if info is not None:
        return checkpoint_label(info.source)
    config = getattr(hf_model_of(model), "config", None)
    return str(getattr(config, "_name_or_path", "") or type(model).__name__)


def model_note(model: Any) -> str:
    info = getattr(model, "depthcurse_info", None)
    return str(getattr(info, "note", "") or "")


@dataclass
class LayerStack:
    """One prepared batch: embeddings, rotary tables and causal mask for a model's layers.

    `layer_forwards` counts how many (sequence, decoder layer) applications ran,
    with an attention-only or MLP-only application counted as one half.
    """

    model: Any
    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    embeddings: Float[Tensor, "batch pos d_model"] = field(init=False)
    layer_forwards: float = 0.0
    attention_implementation: str | None = None
    """Attention implementation of this stack's layer calls; None: `engine_attention`."""

    def __post_init__(self) -> None:
        from transformers.masking_utils import create_causal_mask

        hf = hf_model_of(self.model)
        self.hf = hf
        self.layers = [unwrap_layer(block) for block in hf.model.layers]
        if self.attention_implementation is None:
            self.attention_implementation = engine_attention(hf.config)
        # The bridge's wrapper runs eager attention whatever the config sets, so any other
        # implementation calls the transformers module it wraps.
        self.attentions = [
            layer.self_attn
            if self.attention_implementation == "eager"
            else getattr(layer.self_attn, "original_component", layer.self_attn)
            for layer in self.layers
        ]
        self.n_layers = len(self.layers)
        device = next(hf.parameters()).device
        self.tokens = self.tokens.to(device)
        self.attention_mask = self.attention_mask.to(device)
        self.batch = self.tokens.shape[0]
        with torch.no_grad(), attention_implementation(hf.config, self.attention_implementation):
            self.embeddings = hf.model.embed_tokens(self.tokens)
            self.position_ids = torch.arange(self.tokens.shape[1], device=device).unsqueeze(0)
            self.position_embeddings = hf.model.rotary_emb(self.embeddings, self.position_ids)
            self.causal_mask = create_causal_mask(
                config=hf.config,
                inputs_embeds=self.embeddings,
                attention_mask=self.attention_mask,
                cache=None,
                position_ids=self.position_ids,
            )

    def _mask_for(self, rows: int) -> Tensor | None:
        mask = self.causal_mask
        if mask is None or not isinstance(mask, Tensor) or mask.shape[0] == rows:
            return mask
        return mask.repeat(rows // mask.shape[0], *([1] * (mask.ndim - 1)))

    def _check_rows(self, h: Tensor) -> None:
        if h.shape[0] % self.batch:
            raise ValueError(
                f"residual batch {h.shape[0]} is not a multiple of the prepared batch {self.batch}"
            )

    def attention(self, index: int, h: Float[Tensor, "rows pos d_model"]) -> Tensor:
        """Run layer `index`'s attention sublayer on residual `h` (rows = k × batch)."""
        self._check_rows(h)
        layer = self.layers[index]
        with attention_implementation(self.hf.config, self.attention_implementation):
            output = self.attentions[index](
                hidden_states=layer.input_layernorm(h),
                attention_mask=self._mask_for(h.shape[0]),
                position_embeddings=self.position_embeddings,
                position_ids=self.position_ids,
            )
        self.layer_forwards += 0.5 * h.shape[0]
        return output[0] if isinstance(output, tuple) else output

    def mlp(self, index: int, mid: Float[Tensor, "rows pos d_model"]) -> Tensor:
        """Run layer `index`'s MLP sublayer on the mid-layer residual `mid`."""
        layer = self.layers[index]
        self.layer_forwards += 0.5 * mid.shape[0]
        return layer.mlp(layer.post_attention_layernorm(mid))

    def layer(
        self, index: int, h: Float[Tensor, "rows pos d_model"]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run decoder layer `index` on `h`; return (attention output, MLP output, layer output)."""
        attn_out = self.attention(index, h)
        mid = h + attn_out
        mlp_out = self.mlp(index, mid)
        return attn_out, mlp_out, mid + mlp_out

    def logits(self, h: Float[Tensor, "*rows d_model"]) -> Float[Tensor, "*rows vocab"]:
        """Apply the final norm and unembedding to residuals after the last layer, any leading shape.

        Like `layer`, it records no autograd graph: under grad mode a caller that keeps
        a function of the logits (a softmax row, say) would keep every logits tensor
        of the batch alive with it.
        """
        with torch.no_grad():
            return self.hf.lm_head(self.hf.model.norm(h))


@dataclass
class CleanRun:
    """Residuals of an unmodified forward pass, all in the model's dtype.

    `resid[l]` is the input to layer l (`resid[L]` the input to the final norm),
    `mid[l]` the residual after layer l's attention.
    """

    resid: list[Tensor]
    mid: list[Tensor]
    logits: Tensor | None
    """None once a caller that needs only the clean probabilities has released them."""

    def delta(self, index: int) -> Float[Tensor, "batch pos d_model"]:
        """Return layer `index`'s contribution Δ = out − in, computed in float32."""
        return self.resid[index + 1].float() - self.resid[index].float()


def clean_run(stack: LayerStack, *, logits: bool = True, mid: bool = True) -> CleanRun:
    """Run every layer once on the prepared batch and keep all residuals.

    `logits=False` leaves out the unembedding, for callers that unembed only some
    positions of `resid[L]` themselves (see `residual_nll`). `mid=False` keeps no
    mid-layer residuals (`CleanRun.mid` is then empty), for callers that only
    restart from layer inputs: on smollm2 at 8 x 256 tokens they take 146 MB.
    """
    resid, mids = [stack.embeddings], []
    with torch.no_grad():
        h = stack.embeddings
        for index in range(stack.n_layers):
            attn_out, _, h = stack.layer(index, h)
            if mid:
                mids.append(resid[-1] + attn_out)
            resid.append(h)
        final_logits = stack.logits(h) if logits else None
    return CleanRun(resid, mids, final_logits)


def prediction_mask(
    attention_mask: Int[Tensor, "batch pos"], *, exclude_pos0: bool = True
) -> Bool[Tensor, "batch pos"]:
    """Positions whose next-token prediction is scored: the next token is real (not padding)."""
    mask = torch.zeros_like(attention_mask, dtype=torch.bool)
    mask[:, :-1] = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    if exclude_pos0:
        mask[:, 0] = False
    return mask


def next_token_nll(
    logits: Float[Tensor, "batch pos vocab"],
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    *,
    exclude_pos0: bool = True,
) -> tuple[Float[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Return per-position next-token NLL (float32, nats) and the mask of scored positions.

    Position t predicts token t + 1; positions whose next token is padding, and
    position 0 when `exclude_pos0`, are masked out.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    nll = torch.zeros(tokens.shape, dtype=torch.float32, device=logits.device)
    nll[:, :-1] = -log_probs[:, :-1].gather(-1, tokens[:, 1:, None].to(logits.device))[..., 0]
    mask = prediction_mask(attention_mask.to(logits.device), exclude_pos0=exclude_pos0)
    return nll * mask, mask


def residual_nll(
    stack: LayerStack, h: Float[Tensor, "batch pos d_model"], *, exclude_pos0: bool = True
) -> tuple[Float[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Return `next_token_nll` of the residuals `h` after the last layer, one sequence at a time.

    Equal to `next_token_nll(stack.logits(h), ...)`, but keeps at most one
    sequence's logits: the batch's would be a vocabulary-wide tensor, 384 MiB at
    8 x 256 tokens on smollm2, and its log-softmax as much again.
    """
    rows = [
        next_token_nll(
            stack.logits(h[row : row + 1]),
            stack.tokens[row : row + 1],
            stack.attention_mask[row : row + 1],
            exclude_pos0=exclude_pos0,
        )
        for row in range(h.shape[0])
    ]
    return torch.cat([nll for nll, _ in rows]), torch.cat([mask for _, mask in rows])


def batches_of(
    prompts: Any, batch_size: int
) -> list[tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]]:
    """Normalise a `PromptSet`, a (tokens, attention_mask) pair or a token tensor to batches."""
    from depthcurse.prompts import PromptSet

    if isinstance(prompts, PromptSet):
        return [(ids, mask) for _, ids, mask in prompts.batches(batch_size)]
    if isinstance(prompts, Tensor):
        prompts = (prompts, torch.ones_like(prompts))
    if isinstance(prompts, tuple) and len(prompts) == 2:
        tokens, mask = prompts
        if tokens.ndim != 2 or tokens.shape != mask.shape:
            raise ValueError(
                f"tokens {tuple(tokens.shape)} and attention mask {tuple(mask.shape)} must both be "
                "[batch, pos]"
            )
        if not bool(mask[:, 0].all()):
            raise ValueError("attention mask has padding at position 0; pad on the right")
        return [
            (tokens[i : i + batch_size], mask[i : i + batch_size])
            for i in range(0, tokens.shape[0], batch_size)
        ]
    raise TypeError(
        f"prompts must be a PromptSet, a token tensor or a (tokens, attention_mask) pair, "
        f"got {type(prompts).__name__}"
    )


def prompt_set_name(prompts: Any) -> str:
    return str(getattr(prompts, "name", "tokens"))


@contextmanager
def quiet_nan_warnings() -> Iterator[None]:
    """Silence numpy's all-NaN warnings from nanmax / nanmean over undefined entries."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
