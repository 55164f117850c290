"""`TrainConfig`, the typed settings of a training run, and how recipes and overrides fill it.

Settings merge, lowest priority first: the dataclass defaults, a TOML recipe
(TrainConfig keys at top level, model overrides in a ``[model]`` table),
``KEY=VALUE`` overrides (``model.NAME`` for a model field) and explicit
options such as CLI flags. Unknown keys are rejected by name at every layer.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from depthcurse.config import ConfigError, ModelConfig, check_keys, preset
from depthcurse.growth import METHODS


@dataclass
class TrainConfig:
    """Everything that determines a training run. Saved in ``run.json`` and in every checkpoint."""

    preset: str = "tiny"
    """Model preset from `depthcurse.config.PRESETS`; its n_layers is the target depth."""
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the preset's `ModelConfig` fields, e.g. {"d_model": 64, "ln_scaling": True}."""
    growth: str = "none"
    """Growth method: none (full-depth baseline), stack, midas or lidas."""
    block_size: int | None = None
    """Layers added per growth event; None means 2 for the tiny preset and 4 otherwise."""
    initial_depth: int | None = None
    """Depth of the first stage; None means one block."""
    alpha: float = 1.0
    """PROP-alpha exponent: stage i of k gets a share of the steps proportional to i**alpha."""
    stage_steps: list[int] | None = None
    """Explicit steps per stage (one entry per stage, summing to max_steps) instead of PROP-alpha."""
    lidas_odd: str = "center"
    """LIDAS window when the block count is odd: "center" or "block" (see depthcurse.growth)."""
    copy_moments: bool = True
    """Give copied layers a copy of their source's Adam moments; False starts them fresh."""
    data_dir: str | None = None
    """Prepared data folder with train.bin and val.bin; None prepares the corpus into a cache."""
    source: str | None = None
    """Corpus for a data folder that does not exist yet; None means the default corpus."""
    seq_len: int | None = None
    """Tokens per training sequence; None means the model's max_seq_len."""
    batch_size: int = 16
    """Sequences per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step. Global batch = batch_size * grad_accum * processes."""
    max_steps: int = 2000
    """Optimizer steps in the whole run, summed over all stages."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    warmup_steps: int = 100
    """Steps of linear warm-up from lr/warmup_steps to lr."""
    lr_schedule: str = "cosine"
    """After warm-up: "cosine" decay to the floor, or "wsd" (warmup-stable-decay)."""
    decay_fraction: float = 0.2
    """For "wsd": fraction of max_steps at the end over which lr falls linearly to the floor."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices (embeddings and linear weights) only."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Maximum global gradient norm; 0 disables clipping."""
    eval_interval: int = 200
    """Steps between held-out loss evaluations (also run at the end)."""
    eval_batches: int = 20
    """Validation batches per evaluation."""
    checkpoint_interval: int = 500
    """Steps between checkpoints (growth events and the end always write one)."""
    log_interval: int = 10
    """Steps between metric lines."""
    seed: int = 0
    """Seed of the model initialisation and of the data order."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu", "cuda" or "cuda:N"."""
    dtype: str = "auto"
    """Autocast dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "float32" or "bfloat16"."""
    compile: str = "auto"
    """torch.compile the model, once per stage: "auto" (on CUDA only), "on" or "off"."""
    deterministic: bool = False
    """Deterministic algorithms and a fixed thread count, so a resumed run is bit-identical."""
    threads: int | None = None
    """CPU threads per process. None means OMP_NUM_THREADS when set, else 1 when deterministic,
    else the physical cores divided among the local processes."""
    malloc_retain: bool = True
    """On CPU, make glibc's malloc keep freed memory (no mmap, no heap trimming) so that later
    steps reuse the same pages instead of faulting in new ones. The setting lasts for the rest
    of the process and can double its resident memory (depthcurse.hardware.retain_freed_memory)."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for MFU; None looks the device up (see depthcurse.hardware)."""
    progress: bool = True
    """Show a progress bar."""
    cooldown_fraction: float = 0.0
    """Fraction of max_steps at the end trained on the cooldown mix; 0 disables the mix."""
    cooldown_weight: float = 0.3
    """Share of cooldown batch rows drawn from generated reasoning-primitive text."""
    cooldown_documents: int = 20000
    """Generated reasoning-primitive documents in the cooldown mix (depthcurse.evals)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid value and how to fix it."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        check_keys(ModelConfig, self.model, "model")

        _choice("growth", self.growth, METHODS)
        _choice("lr_schedule", self.lr_schedule, ("cosine", "wsd"))
        _choice("dtype", self.dtype, ("auto", "float32", "bfloat16"))
        _choice("compile", self.compile, ("auto", "on", "off"))
        _choice("lidas_odd", self.lidas_odd, ("center", "block"))

        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_batches",
                     "checkpoint_interval", "log_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("block_size", "initial_depth", "seq_len", "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")

        if self.lr <= 0 or self.adam_eps <= 0:
            raise ConfigError(f"lr and adam_eps must be positive, got lr={self.lr}, adam_eps={self.adam_eps}")
        for name in ("min_lr_ratio", "decay_fraction", "beta1", "beta2"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.seed < 0:
            raise ConfigError(
                "warmup_steps, weight_decay, grad_clip and seed must not be negative, got "
                f"{self.warmup_steps}, {self.weight_decay}, {self.grad_clip}, {self.seed}"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not 0 <= self.cooldown_fraction < 1 or not 0 <= self.cooldown_weight <= 1:
            raise ConfigError(
                f"cooldown_fraction must lie in [0, 1) and cooldown_weight in [0, 1], got "
                f"{self.cooldown_fraction} and {self.cooldown_weight}"
            )
        if self.cooldown_documents <= 0:
            raise ConfigError(f"cooldown_documents must be positive, got {self.cooldown_documents}")

    def cooldown_start(self) -> int | None:
        """Return the first step trained on the cooldown mix, or None when it is disabled."""
        if self.cooldown_fraction == 0:
            return None
        return self.max_steps - max(1, round(self.cooldown_fraction * self.max_steps))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config, rejecting unknown keys by name and values of the wrong type."""
        check_keys(cls, values, "TrainConfig")
        hints = typing.get_type_hints(cls)
        return cls(**{key: _coerce(key, value, hints[key]) for key, value in values.items()})

    def model_config(self) -> ModelConfig:
        """Return the target-depth model config: the preset with the overrides applied."""
        return preset(self.preset, **self.model)

    def resolved(self) -> TrainConfig:
        """Return a copy with block_size and seq_len filled in from the preset."""
        model_cfg = self.model_config()
        block = self.block_size or (2 if self.preset == "tiny" else 4)
        seq_len = self.seq_len or model_cfg.max_seq_len
        if seq_len > model_cfg.max_seq_len:
            raise ConfigError(
                f"seq_len={seq_len} exceeds the model's max_seq_len={model_cfg.max_seq_len}; "
                f"lower seq_len or set model.max_seq_len"
            )
        return dataclasses.replace(self, block_size=block, seq_len=seq_len, model=dict(self.model))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is invalid; choose one of {', '.join(allowed)}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check `value` against the field's type hint; ints are accepted for floats."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{name} must be a list of integers, got {value!r}")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a table of model settings, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    raise AssertionError(f"unhandled type {hint} of TrainConfig.{name}")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` with a TOML value (1e-3, true, [10, 20], "x"); a bare word is a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not KEY=VALUE, e.g. lr=1e-3 or model.d_model=64")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def apply_override(values: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` in a config dict; ``model.NAME`` sets a model field."""
    if key.startswith("model."):
        values.setdefault("model", {})[key.removeprefix("model.")] = value
    elif "." in key:
        raise ConfigError(f"unknown key {key!r}; only model.NAME keys may contain a dot")
    else:
        values[key] = value


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a TOML recipe: TrainConfig keys at top level, model overrides in a [model] table."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"recipe file {path} not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"recipe file {path} is not valid TOML: {err}") from err


def build_config(
    base: dict[str, Any] | None = None,
    recipe: str | Path | None = None,
    overrides: list[str] | None = None,
    options: dict[str, Any] | None = None,
) -> TrainConfig:
    """Merge, lowest priority first: `base`, a recipe file, ``KEY=VALUE`` overrides, `options`.

    `options` are explicit settings such as CLI flags; None values are skipped.
    Keys are checked by name at every layer.
    """
    values: dict[str, Any] = dict(base or {})
    values["model"] = dict(values.get("model") or {})
    layers: list[dict[str, Any]] = []
    if recipe is not None:
        layers.append(load_recipe(recipe))
    parsed: dict[str, Any] = {}
    for text in overrides or []:
        key, value = parse_override(text)
        apply_override(parsed, key, value)
    layers.append(parsed)
    layers.append({k: v for k, v in (options or {}).items() if v is not None})
    for layer in layers:
        for key, value in layer.items():
            if key == "model":
                if not isinstance(value, dict):
                    raise ConfigError(f"model must be a table of model settings, got {value!r}")
                check_keys(ModelConfig, value, "model")
                values["model"].update(value)
            elif key.startswith("model."):
                apply_override(values, key, value)
            else:
                values[key] = value
    return TrainConfig.from_dict(values)
