"""Logit lens: read the residual stream of every layer through the final norm and unembedding.

For the residual h_l at the input of layer l (l = 0..L; h_L is the final
residual, so the lens at layer L is the model's own output):

    lens_l = unembed(final_norm(h_l))

where final_norm recomputes its statistics on h_l itself (for RMSNorm,
g * h_l / sqrt(mean(h_l^2) + eps)). The final residual's cached scale is never
reused: that would give h_l the scale of h_L, a known logit-lens pitfall that
makes early layers look sharper or flatter than they are. Everything runs in
float32 from the model's weights, whatever the model dtype.

Metrics per selected token (real tokens, position 0 excluded by default),
averaged over all selected tokens of all prompts:

- `kl`: KL(p_lens || p_final) by default (`kl_direction="lens||final"`), or
  KL(p_final || p_lens) with `kl_direction="final||lens"`, where p_final is the
  model's output distribution; in nats.
- `top5_overlap`: |top5(lens) ∩ top5(final)| / 5.
- `top1_agreement`: argmax(lens) == argmax(final).
- `entropy`: entropy of p_lens, in nats.
- `accuracy` and `loss`: early-exit next-token accuracy and cross-entropy
  against the true next token, over the tokens that have a real next token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from depthcurse.analyses.common import Accumulator, Conventions, check_kl_direction, make_table

TOP_K = 5
# Tokens per lens evaluation: bounds the (tokens, vocab) float32 buffers, each
# 25 MB at 128 tokens and a 49k vocabulary.
TOKEN_CHUNK = 128
# exp(z) for z below this is subnormal in float32, and torch's CPU exp ran about
# 7x slower over rows with many such entries. Clamping z there changes each of
# those probabilities by less than 2e-38 of the top token's.
EXP_FLOOR = -87.0

FORMULAS = {
    "kl": "KL divergence between p_lens and p_final (direction in kl_direction), nats",
    "top5_overlap": "|top5(lens) ∩ top5(final)| / 5",
    "top1_agreement": "argmax(lens) == argmax(final)",
    "entropy": "H(p_lens), nats",
    "accuracy": "argmax(lens) == next token",
    "loss": "-log p_lens(next token), nats",
}


class LensHead(nn.Module):
    """The model's final norm and unembedding, copied to float32, applied to any residual.

    The norm's statistics are recomputed on the input unless `scale` is given.
    """

    def __init__(
        self,
        norm_weight: Tensor,
        norm_bias: Tensor | None,
        eps: float,
        rms: bool,
        unembed_weight: Tensor,
        unembed_bias: Tensor | None,
    ) -> None:
        super().__init__()
        self.eps, self.rms = eps, rms
        self.register_buffer("norm_weight", norm_weight.detach().float().clone())
        self.register_buffer(
            "norm_bias", None if norm_bias is None else norm_bias.detach().float().clone()
        )
        self.register_buffer("unembed_weight", unembed_weight.detach().float().clone())
        self.register_buffer(
            "unembed_bias", None if unembed_bias is None else unembed_bias.detach().float().clone()
        )

    @classmethod
    def from_model(cls, model: Any) -> LensHead:
        """Copy the final norm and unembedding of a `TransformerBridge` or a `DepthcurseLM`."""
        if hasattr(model, "ln_final") and hasattr(model, "unembed"):
            if getattr(model.cfg, "rmsnorm_uses_offset", False):
                raise NotImplementedError(
                    "final norms of the form (1 + weight) * x are not supported by the lens"
                )
            norm = getattr(model.ln_final, "_original_component", model.ln_final)
            unembed = getattr(model.unembed, "_original_component", model.unembed)
        elif hasattr(model, "final_norm") and hasattr(model, "lm_head"):
            norm, unembed = model.final_norm, model.lm_head
        else:
            raise TypeError(
                f"{type(model).__name__} has neither ln_final/unembed (TransformerBridge) "
                "nor final_norm/lm_head (DepthcurseLM); load it with depthcurse.load"
            )
        eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None)
        if eps is None:
            raise TypeError(f"cannot find the epsilon of final norm {type(norm).__name__}")
        rms = not isinstance(norm, nn.LayerNorm)
        norm_bias = None if rms else norm.bias
        return cls(
            norm.weight, norm_bias, float(eps), rms, unembed.weight, getattr(unembed, "bias", None)
        )

    def normalize(
        self, h: Float[Tensor, "tokens d_model"], scale: Tensor | None = None
    ) -> Float[Tensor, "tokens d_model"]:
        h = h.float()
        if not self.rms:
            h = h - h.mean(-1, keepdim=True)
        if scale is None:
            scale = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        out = h * scale * self.norm_weight
        return out if self.norm_bias is None else out + self.norm_bias

    def forward(
        self, h: Float[Tensor, "tokens d_model"], scale: Tensor | None = None
    ) -> Float[Tensor, "tokens vocab"]:
        """Return float32 logits of `h`; `scale` replaces the recomputed norm statistic."""
        logits = self.normalize(h, scale) @ self.unembed_weight.T
        return logits if self.unembed_bias is None else logits + self.unembed_bias


@dataclass
class FinalDistribution:
    """The model's output distribution for a chunk of tokens, computed once for all layers."""

    logp: Float[Tensor, "tokens vocab"]
    p: Float[Tensor, "tokens vocab"]
    top: Int[Tensor, "tokens k"]
    neg_entropy: Float[Tensor, " tokens"]

    @classmethod
    def from_logits(cls, logits: Float[Tensor, "tokens vocab"]) -> FinalDistribution:
        logits = logits.float()
        k = min(TOP_K, logits.shape[-1])
        # softmax rather than logp.exp(): torch's exp is many times slower on very
        # negative inputs, which a 49k-token log-distribution is full of.
        logp, p = torch.log_softmax(logits, -1), torch.softmax(logits, -1)
        return cls(logp, p, logits.topk(k, -1).indices, row_dot(p, logp))


def row_dot(
    x: Float[Tensor, "tokens vocab"], y: Float[Tensor, "tokens vocab"]
) -> Float[Tensor, " tokens"]:
    """Return the dot product of each row of `x` with the same row of `y`."""
    # linalg.vecdot ran about 3x faster than a batched (1 x V) @ (V x 1) matrix
    # product for rows of 49k entries on CPU.
    return torch.linalg.vecdot(x, y)


def lens_metrics(
    lens_logits: Float[Tensor, "tokens vocab"],
    final: FinalDistribution | Float[Tensor, "tokens vocab"],
    targets: Int[Tensor, " tokens"],
    kl_direction: str = "lens||final",
) -> dict[str, Tensor]:
    """Per-token lens metrics; `accuracy` and `loss` are NaN where `targets` is -1.

    The lens distribution is never materialised as log-probabilities and
    probabilities side by side. With x the lens logits, m their row maximum,
    e = exp(x - m) and s = sum(e): log p_lens = x - m - log s, so

        H(p_lens)                = m + log s - <e, x> / s
        KL(p_lens || p_final)    = <e, x> / s - m - log s - <e, log p_final> / s
        KL(p_final || p_lens)    = -H(p_final) - <p_final, x> + m + log s
        -log p_lens(next token)  = m + log s - x[next token]

    with H(p_final) = -<p_final, log p_final>. This takes one exponential and
    a few passes over the (tokens, vocab) buffer instead of a softmax and a
    log-softmax.
    """
    if not isinstance(final, FinalDistribution):
        final = FinalDistribution.from_logits(final)
    k = final.top.shape[-1]
    x = lens_logits.float()
    top_values, lens_top = x.topk(k, dim=-1)
    has_target = targets >= 0
    safe_targets = targets.clamp_min(0)
    target_logit = x.gather(-1, safe_targets[:, None])[:, 0]
    peak = top_values[:, 0]
    e = (x - peak[:, None]).clamp_min_(EXP_FLOOR).exp_()  # a new buffer; x stays untouched
    s = e.sum(-1)
    log_z = peak + s.log()  # log of the partition function; s >= 1 (the maximum gives exp(0))
    mean_x = row_dot(e, x) / s  # <p_lens, x>
    entropy = log_z - mean_x
    if kl_direction == "lens||final":
        kl = mean_x - log_z - row_dot(e, final.logp) / s
    else:
        kl = final.neg_entropy - row_dot(final.p, x) + log_z
    overlap = (lens_top[:, :, None] == final.top[:, None, :]).any(-1).sum(-1).float() / k
    nan = torch.full_like(kl, float("nan"))
    accuracy = (lens_top[:, 0] == safe_targets).float()
    loss = log_z - target_logit
    return {
        "kl": kl,
        "top5_overlap": overlap,
        "top1_agreement": (lens_top[:, 0] == final.top[:, 0]).float(),
        "entropy": entropy,
        "accuracy": torch.where(has_target, accuracy, nan),
        "loss": torch.where(has_target, loss, nan),
    }


class LensAccumulator:
    """Running means of the lens metrics per layer; `translate(layer, h)` makes it a tuned lens."""

    def __init__(
        self,
        head: LensHead,
        kl_direction: str = "lens||final",
        translate: Callable[[int, Tensor], Tensor] | None = None,
        lens: str = "logit",
        layers: Sequence[int] | None = None,
    ) -> None:
        check_kl_direction(kl_direction)
        self.layers = None if layers is None else set(layers)
        self.head, self.kl_direction, self.translate, self.lens = (
            head,
            kl_direction,
            translate,
            lens,
        )
        self.name = f"{lens}_lens"
        self.acc = Accumulator()

    @torch.no_grad()
    def update(
        self,
        h: list[Tensor],
        final_logits: Float[Tensor, "tokens vocab"] | Float[Tensor, "batch pos vocab"],
        targets: Int[Tensor, " tokens"],
        *,
        keep: Bool[Tensor, "batch pos"] | None = None,
    ) -> None:
        """Add one batch: residuals h_0..h_L (tokens, d_model), the model's logits, next tokens.

        With `keep`, `final_logits` are the batch's (batch, pos, vocab) logits and the
        tokens are its positions where `keep` is true, in order. They are read one
        chunk at a time, so the selected logits are never copied whole.
        """
        rows = None if keep is None else keep.nonzero(as_tuple=True)
        n_tokens = h[0].shape[0]
        for start in range(0, n_tokens, TOKEN_CHUNK):
            chunk = slice(start, start + TOKEN_CHUNK)
            chunk_logits = (
                final_logits[chunk] if rows is None else final_logits[rows[0][chunk], rows[1][chunk]]
            )
            final = FinalDistribution.from_logits(chunk_logits)
            del chunk_logits
            for layer, resid in enumerate(h):
                if self.layers is not None and layer not in self.layers:
                    continue
                resid = resid[chunk]
                if self.translate is not None:
                    resid = self.translate(layer, resid)
                metrics = lens_metrics(self.head(resid), final, targets[chunk], self.kl_direction)
                for metric, values in metrics.items():
                    self.acc.add(metric, layer, values)

    def table(self, conventions: Conventions) -> pd.DataFrame:
        rows = self.acc.rows(("mean",))
        for row in rows:
            row["formula"] = FORMULAS[row["metric"]]
            row["lens"] = self.lens
        table = make_table(
            rows,
            conventions.with_kl(self.kl_direction),
            analysis=self.name,
            final_norm="statistics recomputed on each h_l",
        )
        return table.sort_values(["metric", "layer"], ignore_index=True)


def logit_lens(source: Any, prompts: Any = None, **options: Any) -> pd.DataFrame:
    """Return logit-lens metrics (kl, top5_overlap, top1_agreement, entropy, accuracy, loss).

    `source` is a `StreamStats` from `collect_stream`, or a hooked model; then
    `prompts` is required and `options` (e.g. `kl_direction="final||lens"`) go
    to `collect_stream`.
    """
    from depthcurse.analyses.stream import stats_for

    return stats_for(source, prompts, ("logit_lens",), options).logit_lens()
