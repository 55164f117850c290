"""A compact pre-LN decoder-only language model, Llama-style (as SmolLM-v1).

Read top to bottom: token embedding, a `ModuleList` of `Block`s, final RMSNorm,
unembedding. Each block is two residual lines,

    h = h + attn(norm_1(h) * s_l)
    h = h + mlp(norm_2(h) * s_l)

where s_l = 1 for a standard pre-LN model and s_l = 1/sqrt(l) (l the 1-based
layer position) with LayerNorm Scaling (Sun et al. 2025, arXiv 2502.05795).
The scale depends on the position of the layer in the stack, not on the layer
object, so a layer moved by depth growth takes the scale of its new position.

The numerics follow transformers' `LlamaForCausalLM` (RMSNorm in float32, the
rotate-half rotary convention, SwiGLU MLP, grouped-query attention), so a
checkpoint exported by `depthcurse.checkpoint` reproduces our logits there.

While gradients are recorded in eager mode, RMSNorm and the rotary embedding
run as hand-written autograd functions with cheaper backwards (see
`use_training_functions`). For float32 input their forwards match the plain ops to one ulp.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from depthcurse.config import ModelConfig


def use_training_functions() -> bool:
    """Return whether layers should run the hand-written autograd functions below.

    They replace chains of small eager ops (and autograd's saved intermediates)
    when gradients are recorded in eager mode. Without gradients the plain ops
    run. Under torch.compile the plain ops run too, so inductor can fuse them.
    """
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm, weight * x / sqrt(mean(x^2) + eps), saving x, weight and 1/rms for backward.

    For float32, float16 and bfloat16 inputs the forward runs the same ops in
    the same order as `RMSNorm`'s eager path, so the outputs are bit-identical.
    float64 inputs stay in float64 here, which gradcheck needs, while the eager
    path computes in float32 as transformers does. The backward computes, with
    x_hat = x * r and r = 1/rms,

        dweight = sum over rows of dy * x_hat
        dx = r * (dy * weight) - x * r^3 * mean(dy * weight * x)

    where the row sums run as matrix products over one product dy * x.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        x_compute = x.to(compute_dtype)
        rstd = torch.rsqrt(x_compute.pow(2).mean(-1, keepdim=True) + eps)
        normed = (x_compute * rstd).to(x.dtype)
        ctx.save_for_backward(x, weight, rstd)
        return weight * normed

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors
        d_model = x.shape[-1]
        x_compute = x.to(rstd.dtype)
        grad_rows = grad_out.reshape(-1, d_model).to(rstd.dtype)
        weight_compute = weight.to(rstd.dtype)
        rstd_rows = rstd.reshape(-1)

        # One full-size product dy * x serves both row sums. dweight is its sum over
        # rows weighted by r, and sum(dy * weight * x) per row is its product with weight.
        grad_times_x = grad_rows * x_compute.reshape(-1, d_model)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (rstd_rows @ grad_times_x).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            coeff = (grad_times_x @ weight_compute) * rstd_rows.pow(3) / d_model
            grad_x = (grad_rows * weight_compute).mul_(rstd.reshape(-1, 1))
            grad_x.addcmul_(x_compute.reshape(-1, d_model), coeff.unsqueeze(-1), value=-1)
            grad_x = grad_x.reshape(x.shape).to(x.dtype)
        return grad_x, grad_weight, None


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        if use_training_functions():
            return RMSNormFunction.apply(x, self.weight, self.eps)
        input_dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(input_dtype)


def rotary_tables(
    seq_len: int, d_head: int, theta: float, device: torch.device | None = None
) -> tuple[Float[Tensor, "pos d_head"], Float[Tensor, "pos d_head"]]:
    """Return the cos and sin tables of rotary embeddings for positions 0..seq_len-1."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.int64, device=device).float() / d_head))
    positions = torch.arange(seq_len, device=device).float()
    freqs = torch.outer(positions, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(
    x: Float[Tensor, "batch heads pos d_head"], cos: Tensor, sin: Tensor
) -> Float[Tensor, "batch heads pos d_head"]:
    if use_training_functions():
        return RotaryFunction.apply(x, cos, sin)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class RotaryFunction(torch.autograd.Function):
    """Rotary embedding x * cos + rotate_half(x) * sin, saving only the tables for backward.

    rotate_half(x) * sin = cat(-x2, x1) * sin equals roll(x, half) * cat(-sin1, sin2),
    so the forward needs one roll and two in-place ops. The backward applies the
    transpose, dy * cos + roll(dy, half) * cat(sin2, -sin1), in the same form.
    With the tables of `rotary_tables`, whose halves hold the same angles, that
    is the rotation by the negative angle. No gradient flows to cos or sin.
    """

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        forward_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        backward_sin = torch.cat((sin[..., half:], -sin[..., :half]), dim=-1)
        ctx.save_for_backward(cos, backward_sin)
        return _rotate(x, cos, forward_sin)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:
        cos, backward_sin = ctx.saved_tensors
        return _rotate(grad_out, cos, backward_sin), None, None


def _rotate(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    # roll returns a new tensor, so the rest runs in place on it. The output
    # takes the promoted dtype, as x * cos does (bfloat16 x, float32 tables).
    out = x.roll(x.shape[-1] // 2, dims=-1).to(torch.promote_types(x.dtype, cos.dtype))
    return out.mul_(signed_sin).addcmul_(x, cos)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.d_head, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.d_head, cfg.d_model, bias=False)

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
    ) -> Float[Tensor, "batch pos d_model"]:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.d_head).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.d_head).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.d_head).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # SDPA shares each key/value head among n_heads / n_kv_heads query heads itself.
        gqa = self.n_kv_heads != self.n_heads
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.down_proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        h: Float[Tensor, "batch pos d_model"],
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None = None,
        norm_scale: float = 1.0,
        cache: dict[str, Tensor] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        attn_in = self.attn_norm(h)
        if norm_scale != 1.0:
            attn_in = attn_in * norm_scale
        attn_out = self.attn(attn_in, cos, sin, mask)
        h_mid = h + attn_out
        mlp_in = self.mlp_norm(h_mid)
        if norm_scale != 1.0:
            mlp_in = mlp_in * norm_scale
        mlp_out = self.mlp(mlp_in)
        h_out = h_mid + mlp_out
        if cache is not None:
            cache.update(resid_pre=h, attn_out=attn_out, resid_mid=h_mid, mlp_out=mlp_out, resid_post=h_out)
        return h_out


class DepthcurseLM(nn.Module):
    """Embedding, a stack of pre-LN blocks, final RMSNorm and unembedding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rotary_tables(cfg.max_seq_len, cfg.d_head, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _init_weights(self, module: nn.Module) -> None:
        # Plain normal init, no depth-scaled variant: LayerNorm Scaling loses
        # its benefit when combined with std/sqrt(2L) init (Sun et al. 2025).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def norm_scale(self, position: int) -> float:
        """Factor on both pre-norm outputs of the layer at 0-based `position`."""
        return 1.0 / math.sqrt(position + 1) if self.cfg.ln_scaling else 1.0

    def attention_mask(
        self, padding_mask: Int[Tensor, "batch pos"] | None, seq: int
    ) -> Tensor | None:
        """Return a boolean (batch, 1, pos, pos) mask, or None for plain causal attention."""
        if padding_mask is None:
            return None
        causal = torch.ones(seq, seq, dtype=torch.bool, device=padding_mask.device).tril()
        keys = padding_mask.bool()[:, None, None, :]
        mask = causal[None, None] & keys
        # A fully masked row (a padding query) would give NaN in softmax; let it
        # attend to itself. Its outputs are padding and never used.
        eye = torch.eye(seq, dtype=torch.bool, device=padding_mask.device)[None, None]
        return mask | eye

    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        residuals: dict[str, Tensor] | None = None,
    ) -> Float[Tensor, "batch pos vocab"]:
        """Return next-token logits.

        `attention_mask` marks real tokens with 1 and padding with 0 (right
        padding keeps positions 0..n-1 for real tokens). When `residuals` is a
        dict it is filled with TransformerLens-named activations:
        `blocks.{l}.hook_resid_pre`, `hook_attn_out`, `hook_resid_mid`,
        `hook_mlp_out`, `hook_resid_post`, and `ln_final.hook_in`.
        """
        seq = input_ids.shape[1]
        if seq > self.cfg.max_seq_len:
            raise ValueError(
                f"input has {seq} tokens but the model supports at most max_seq_len={self.cfg.max_seq_len}"
            )
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        mask = self.attention_mask(attention_mask, seq)
        h = self.embed(input_ids)
        for position, block in enumerate(self.blocks):
            cache: dict[str, Tensor] | None = {} if residuals is not None else None
            h = block(h, cos, sin, mask, self.norm_scale(position), cache)
            if cache is not None:
                for key, value in cache.items():
                    residuals[f"blocks.{position}.hook_{key}"] = value
        if residuals is not None:
            residuals["ln_final.hook_in"] = h
        return self.lm_head(self.final_norm(h))
