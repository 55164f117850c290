"""Load checkpoints and public models as TransformerLens `TransformerBridge`s.

The bridge is booted from a transformers model already in memory, so nothing
reaches a model hub. No weight processing is applied by default (no
`fold_ln`, no centring): the bridge's logits equal the source model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from depthcurse.checkpoint import META_FILE, read_metadata


class LoadError(RuntimeError):
    """A model source cannot be loaded."""


@dataclass
class ModelInfo:
    """What a hooked model was loaded from, attached to it as `model.depthcurse_info`."""

    source: str
    kind: str
    dtype: str
    weight_processing: bool = False
    growth_history: list[dict[str, Any]] = field(default_factory=list)
    layer_sources: list[int] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def load(
    source: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> Any:
    """Return a `TransformerBridge` for a depthcurse checkpoint folder or a Hugging Face folder.

    The returned model has `.tokenizer` and `.depthcurse_info` (a `ModelInfo`).
    """
    path = Path(source)
    if not path.exists():
        raise LoadError(f"model source {source} does not exist; pass a checkpoint folder")
    meta = read_metadata(path) if (path / META_FILE).is_file() else {}
    hf_model, tokenizer = _load_hf_folder(path, dtype)
    info = ModelInfo(
        source=str(path),
        kind="depthcurse" if meta else "huggingface",
        dtype=str(dtype).removeprefix("torch."),
        growth_history=meta.get("growth_history", []),
        layer_sources=meta.get("layer_sources"),
        metadata=meta,
    )
    return bridge_from_hf(hf_model, tokenizer, info, device=device)


def _load_hf_folder(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation="eager", trust_remote_code=False, local_files_only=True
    ).eval()
    tokenizer = None
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def bridge_from_hf(hf_model: Any, tokenizer: Any, info: ModelInfo, *, device: Any = None) -> Any:
    """Wrap an in-memory transformers causal LM in a `TransformerBridge`."""
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    if device is not None:
        hf_model = hf_model.to(device)
    architecture = hf_model.config.architectures[0] if hf_model.config.architectures else type(hf_model).__name__
    bridge = build_bridge_from_module(
        hf_model, architecture, hf_config=hf_model.config, tokenizer=tokenizer, model_name=info.source
    )
    bridge.depthcurse_info = info
    return bridge
