"""Typed model configuration and the named presets.

`ModelConfig` is the single source of truth for a model's shape. It is saved in
every checkpoint (`depthcurse.json`) and at the top of every training log.
Unknown keys are rejected with the key named, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


@dataclass
class ModelConfig:
    """Shape and options of a pre-LN, Llama-style decoder-only language model."""

    vocab_size: int = 4096
    """Number of token ids the embedding and unembedding cover."""
    d_model: int = 128
    """Width of the residual stream."""
    n_layers: int = 8
    """Number of transformer layers (attention + MLP each)."""
    n_heads: int = 4
    """Number of query heads; d_model must be divisible by it."""
    n_kv_heads: int = 2
    """Number of key/value heads (grouped-query attention); divides n_heads."""
    d_mlp: int = 384
    """Hidden width of the SwiGLU MLP (Llama's intermediate_size)."""
    max_seq_len: int = 256
    """Maximum sequence length the model is trained and exported for."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding frequencies."""
    norm_eps: float = 1e-5
    """Epsilon inside RMSNorm."""
    tie_embeddings: bool = True
    """Share the token embedding matrix with the unembedding."""
    ln_scaling: bool = False
    """LayerNorm Scaling (Sun et al. 2025, arXiv 2502.05795): in layer l (1-based),
    multiply both pre-norm outputs by 1/sqrt(l)."""
    init_std: float = 0.02
    """Standard deviation of the plain normal initialisation of every matrix."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent field."""
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_mlp", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"ModelConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"ModelConfig.n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}"
            )
        if self.d_head % 2:
            raise ConfigError(f"head size d_model/n_heads={self.d_head} must be even for rotary embeddings")
        if self.init_std <= 0 or self.norm_eps <= 0 or self.rope_theta <= 0:
            raise ConfigError("ModelConfig.init_std, norm_eps and rope_theta must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build a config, rejecting unknown keys by name."""
        check_keys(cls, values, "ModelConfig")
        return cls(**values)

    def replace(self, **changes: Any) -> ModelConfig:
        check_keys(type(self), changes, "ModelConfig")
        return dataclasses.replace(self, **changes)

    def param_count(self, include_embeddings: bool = True) -> int:
        """Number of parameters of a model with this config."""
        d, h = self.d_model, self.d_head
        attn = d * self.n_heads * h + 2 * d * self.n_kv_heads * h + self.n_heads * h * d
        mlp = 3 * d * self.d_mlp
        per_layer = attn + mlp + 2 * d
        total = self.n_layers * per_layer + d
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return total


def check_keys(cls: type, values: dict[str, Any], what: str) -> None:
    """Raise ConfigError if `values` contains a key that is not a field of `cls`."""
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(
                f"unknown {what} key {key!r}; valid keys are: {', '.join(sorted(known))}"
            )


# Shapes of the SmolLM-v1 family (HuggingFaceTB/SmolLM-*), Llama-style with tied
# embeddings and a 49152-token vocabulary.
PRESETS: dict[str, ModelConfig] = {
    # About 2.1M parameters: trains in minutes on 2 CPU cores.
    "tiny": ModelConfig(
        vocab_size=4096, d_model=128, n_layers=8, n_heads=4, n_kv_heads=2, d_mlp=384, max_seq_len=256
    ),
    "smollm-135m": ModelConfig(
        vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_mlp=1536, max_seq_len=2048
    ),
    "smollm-360m": ModelConfig(
        vocab_size=49152, d_model=960, n_layers=32, n_heads=15, n_kv_heads=5, d_mlp=2560, max_seq_len=2048
    ),
    "smollm-1.7b": ModelConfig(
        vocab_size=49152, d_model=2048, n_layers=24, n_heads=32, n_kv_heads=32, d_mlp=8192, max_seq_len=2048
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """Return a copy of the named preset with `overrides` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
