"""Tuned lens: a learned affine translator per layer before the final norm and unembedding.

Following Belrose et al. 2023 (arXiv 2303.08112), the lens at the input of
layer l (l = 0..L-1) is

    tuned_l = unembed(final_norm(h_l + A_l h_l + b_l))

with A_l (d_model x d_model) and b_l. A new `TunedLens` has them at zero, so
it is the logit lens. `train_tuned_lens` starts them by default at the ridge
least-squares map from h_l to h_L (the linear shortcut of Yom Din et al. 2023,
arXiv 2303.09435), which brings the KL most of the way down at the cost of a
few matrix solves, and then trains them jointly to minimise the
token mean over layers of KL(p_final || p_lens), in nats, on held-out text
(text the model was not trained on), where p_final comes from the final
residual h_L through the same float32 head. The output h_L needs no
translator: there the lens already is the model's distribution, so layer L
uses the identity. As in the logit lens, final_norm recomputes its statistics
on its own input, everything runs in float32, and padding and (by default)
position 0 are left out of training and evaluation.

`tuned_lens` reports the logit lens's metrics (kl in the requested direction,
top5_overlap, top1_agreement, entropy, accuracy, loss) for the tuned lens.
Translators are saved as `tuned_lens.safetensors` inside the checkpoint folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import trange

from depthcurse.analyses.common import selected_tokens, token_batches
from depthcurse.analyses.logit_lens import EXP_FLOOR, LensHead, row_dot

TUNED_LENS_FILE = "tuned_lens.safetensors"


class TunedLens(nn.Module):
    """One zero-initialised affine translator h -> h + A h + b per layer input h_0..h_{L-1}."""

    def __init__(self, n_layers: int, d_model: int, metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.n_layers, self.d_model = n_layers, d_model
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        for translator in self.translators:
            nn.init.zeros_(translator.weight)
            nn.init.zeros_(translator.bias)
        self.metadata: dict[str, Any] = dict(metadata or {})

    def translate(
        self, layer: int, h: Float[Tensor, "tokens d_model"]
    ) -> Float[Tensor, "tokens d_model"]:
        """Apply layer `layer`'s translator; the output layer L returns `h` unchanged."""
        if layer == self.n_layers:
            return h
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} is outside 0..{self.n_layers}")
        return h + self.translators[layer](h.float())

    def check_model(self, model: Any) -> None:
        n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
        if (n_layers, d_model) != (self.n_layers, self.d_model):
            raise ValueError(
                f"tuned lens is for {self.n_layers} layers x d_model {self.d_model} but the model "
                f"has {n_layers} x {d_model}; train one with train_tuned_lens for this model"
            )

    def save(self, path: str | Path) -> Path:
        """Write the translators and metadata to a safetensors file; return its path."""
        path = Path(path)
        if path.is_dir():
            path = path / TUNED_LENS_FILE
        tensors = {name: p.detach().float().contiguous() for name, p in self.state_dict().items()}
        header = {
            "n_layers": str(self.n_layers),
            "d_model": str(self.d_model),
            "metadata": json.dumps(self.metadata),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=header)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TunedLens:
        """Read a tuned lens written by `save` (a file, or a checkpoint folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / TUNED_LENS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no tuned lens at {path}; train one with train_tuned_lens(model, prompts)"
            )
        with safe_open(str(path), framework="pt") as file:
            header = file.metadata()
            tensors = {name: file.get_tensor(name) for name in file.keys()}
        lens = cls(int(header["n_layers"]), int(header["d_model"]), json.loads(header["metadata"]))
        lens.load_state_dict(tensors)
        return lens


def default_lens_path(model: Any) -> Path | None:
    """`tuned_lens.safetensors` inside the model's checkpoint folder, if it was loaded from one."""
    info = getattr(model, "depthcurse_info", None)
    if info is None or not Path(info.source).is_dir():
        return None
    return Path(info.source) / TUNED_LENS_FILE


def collect_residuals(
    model: Any, prompts: Any, *, batch_size: int, exclude_pos0: bool
) -> Float[Tensor, "tokens layers_plus_one d_model"]:
    """Return h_0..h_L of the selected tokens of `prompts`, in float32.

    The forward passes return no logits, and each cached residual is copied into
    the result and dropped from the cache at once, so no batch's logits or second
    copy of its cache are held (see `stream.float_tokens`).
    """
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + ["ln_final.hook_in"]
    batches = list(token_batches(prompts, batch_size))
    total = sum(int(selected_tokens(mask, exclude_pos0).sum()) for _, mask in batches)
    device = next(model.parameters()).device
    result = torch.empty(
        (total, len(names), model.cfg.d_model), dtype=torch.float32, device=device
    )
    start = 0
    for ids, mask in batches:
        ids, mask = ids.to(device), mask.to(device)
        keep = selected_tokens(mask, exclude_pos0)
        end = start + int(keep.sum())
        with torch.no_grad():
            _, cache = model.run_with_cache(
                ids, names_filter=names, attention_mask=mask, return_type=None
            )
        for index, name in enumerate(names):
            result[start:end, index] = cache.cache_dict.pop(name)[keep]
        start = end
    return result


class _SoftTargetKL(torch.autograd.Function):
    """Token mean of KL(p_final || softmax(x W^T + b)), with a hand-written backward.

    The gradient with respect to the logits is (p_lens - p_final) / tokens, so
    the backward pass needs only the lens probabilities, which the forward pass
    leaves in its one (tokens, vocab) buffer. Autograd through log_softmax and
    the KL sum keeps several such buffers per layer.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        final_p: Tensor,
        final_neg_entropy: Tensor,
    ) -> Tensor:
        logits = x @ weight.T
        if bias is not None:
            logits += bias
        peak = logits.amax(-1)
        cross = row_dot(final_p, logits)
        p = logits.sub_(peak[:, None]).clamp_min_(EXP_FLOOR).exp_()  # in place: exp(x - peak)
        total = p.sum(-1)
        p /= total[:, None]
        kl = final_neg_entropy - cross + peak + total.log()
        ctx.save_for_backward(p, final_p, weight)
        return kl.mean()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        p, final_p, weight = ctx.saved_tensors
        grad_logits = (p - final_p).mul_(grad / p.shape[0])
        return grad_logits @ weight, None, None, None, None


def soft_target_kl(
    head: LensHead,
    h: Float[Tensor, "tokens d_model"],
    final_p: Float[Tensor, "tokens vocab"],
    final_neg_entropy: Float[Tensor, " tokens"],
) -> Tensor:
    """Return the token mean of KL(p_final || p_lens) for the lens of `h`, differentiable in h."""
    return _SoftTargetKL.apply(
        head.normalize(h), head.unembed_weight, head.unembed_bias, final_p, final_neg_entropy
    )


@torch.no_grad()
def least_squares_init(
    lens: TunedLens, residuals: Float[Tensor, "tokens layers_plus_one d_model"], ridge: float = 1e-3
) -> None:
    """Set each translator so that h_l + A_l h_l + b_l is the ridge fit of h_L from h_l."""
    from depthcurse.analyses.linear_map import ridge_fit

    identity = torch.eye(lens.d_model, dtype=torch.float64, device=residuals.device)
    for layer, translator in enumerate(lens.translators):
        weight, bias = ridge_fit(residuals[:, layer], residuals[:, -1], ridge)
        # nn.Linear computes h @ A^T + b, and h + h @ A^T + b = h @ weight + bias.
        translator.weight.copy_((weight - identity).T)
        translator.bias.copy_(bias)


def train_tuned_lens(
    model: Any,
    prompts: Any,
    *,
    steps: int = 250,
    tokens_per_step: int = 256,
    lr: float = 1e-3,
    batch_size: int = 8,
    exclude_pos0: bool = True,
    seed: int = 0,
    init: str = "least_squares",
    save: bool | str | Path = True,
    progress: bool = False,
) -> TunedLens:
    """Train a `TunedLens` for `model` on held-out `prompts` and return it.

    Adam on the token mean over layers of KL(p_final || p_lens); each step
    draws `tokens_per_step` tokens at random from the residuals of `prompts`,
    which are computed once. `init="least_squares"` (the default) starts each
    translator at the ridge least-squares map from h_l to h_L on those
    residuals, the linear shortcut of Yom Din et al. 2023 (arXiv 2303.09435);
    `init="zero"` starts at the identity, as Belrose et al. 2023 do. On
    smollm2-135m the least-squares start alone gave a held-out KL of 1.8 nats
    (mean over layers), where the zero start needed far more than 10 steps of
    64 tokens to get below 10; each step costs two unembeddings per layer. `save=True` writes the lens into the model's
    checkpoint folder, unless the model was not loaded from a folder. A path
    writes it to that path, and False keeps it in memory only.
    """
    if steps < 0 or tokens_per_step <= 0:
        raise ValueError(
            f"steps ({steps}) must be >= 0 and tokens_per_step ({tokens_per_step}) > 0"
        )
    if init not in ("least_squares", "zero"):
        raise ValueError(f"init={init!r} is not one of 'least_squares', 'zero'")
    head = LensHead.from_model(model)
    residuals = collect_residuals(model, prompts, batch_size=batch_size, exclude_pos0=exclude_pos0)
    n_tokens, n_points, d_model = residuals.shape
    if n_tokens == 0:
        raise ValueError(
            "prompts have no selected tokens; give longer prompts or exclude_pos0=False"
        )
    lens = TunedLens(n_points - 1, d_model).to(residuals.device)
    if init == "least_squares":
        least_squares_init(lens, residuals)
    optimizer = torch.optim.Adam(lens.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in trange(steps, desc="tuned lens", disable=not progress):
        index = torch.randint(0, n_tokens, (min(tokens_per_step, n_tokens),), generator=generator)
        batch = residuals[index]
        with torch.no_grad():
            final_logits = head(batch[:, -1])
            final_logp = torch.log_softmax(final_logits, dim=-1)
            final_p = torch.softmax(final_logits, dim=-1)
            final_neg_entropy = row_dot(final_p, final_logp)
            del final_logits, final_logp
        # The layers' translators are independent, so backpropagating each
        # layer's term on its own gives the gradient of the mean while holding
        # one layer's (tokens, vocab) buffers at a time.
        optimizer.zero_grad()
        loss = 0.0
        for layer in range(lens.n_layers):
            translated = lens.translate(layer, batch[:, layer])
            layer_loss = soft_target_kl(head, translated, final_p, final_neg_entropy)
            (layer_loss / lens.n_layers).backward()
            loss += layer_loss.item() / lens.n_layers
        optimizer.step()
        losses.append(loss)
    lens.metadata = {
        "objective": "mean over layers of KL(p_final || p_lens), nats",
        "init": init,
        "steps": steps,
        "tokens_per_step": tokens_per_step,
        "lr": lr,
        "optimizer": "Adam",
        "training_tokens": n_tokens,
        "exclude_pos0": exclude_pos0,
        "seed": seed,
        "final_training_loss": losses[-1] if losses else None,
        "model": str(getattr(getattr(model, "depthcurse_info", None), "source", "")),
    }
    if save is True:
        target = default_lens_path(model)
    elif save:
        target = Path(save)
    else:
        target = None
    if target is not None:
        lens.save(target)
    return lens


def tuned_lens(
    source: Any, prompts: Any = None, lens: TunedLens | str | Path | None = None, **options: Any
) -> pd.DataFrame:
    """Return the logit lens's metrics for a tuned lens.

    `source` is a `StreamStats` collected with `tuned_lens=`, or a hooked
    model. For a model, `prompts` is required, `options` go to
    `collect_stream`, and `lens` is a `TunedLens` or a path. By default `lens`
    is the one saved in the model's checkpoint folder.
    """
    from depthcurse.analyses.stream import StreamStats, collect_stream

    if isinstance(source, StreamStats):
        if prompts is not None or lens is not None or options:
            raise ValueError(
                "source is already a StreamStats; prompts, lens and options apply to a model"
            )
        return source.tuned_lens()
    if prompts is None:
        raise ValueError(
            "prompts are required when source is a model; pass a PromptSet or token batch"
        )
    if lens is None:
        lens = default_lens_path(source)
        if lens is None:
            raise ValueError("the model was not loaded from a checkpoint folder; pass lens=")
    if not isinstance(lens, TunedLens):
        lens = TunedLens.load(lens)
    return collect_stream(source, prompts, analyses=(), tuned_lens=lens, **options).tuned_lens()
