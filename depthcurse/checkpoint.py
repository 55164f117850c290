"""Checkpoint folders that transformers opens as `LlamaForCausalLM` as they are.

A checkpoint is a folder holding

- `model.safetensors`: the weights under transformers' Llama names. With
  LayerNorm Scaling the 1/sqrt(l) factor is folded into the RMSNorm gains,
  which is exact in real arithmetic because the factor multiplies the gain.
- `config.json`: the matching `LlamaConfig`.
- `tokenizer.json` (+ `tokenizer_config.json`), when a tokenizer is given.
- `depthcurse.json`: our metadata (model config, growth history, the source
  layer of every layer, step, tokens seen, seed, package version and git
  revision).
- `training_state.pt`, optional: optimizer, RNG and data-sampler state for
  resuming, plus the unfolded norm gains so a resumed LayerNorm-Scaling run
  continues from bit-identical weights. It holds only tensors and plain
  containers and is read with `torch.load(weights_only=True)`.

Writes are atomic: everything goes into a temporary sibling folder, each file
is fsynced, and the folder is renamed into place. A crash mid-write leaves a
temporary folder that no loader reads, never a half checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from depthcurse import __version__
from depthcurse.config import ConfigError, ModelConfig
from depthcurse.model import DepthcurseLM

WEIGHTS_FILE = "model.safetensors"
HF_CONFIG_FILE = "config.json"
META_FILE = "depthcurse.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TRAINING_STATE_FILE = "training_state.pt"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete, corrupt or inconsistent."""


# ---------------------------------------------------------------------------
# Name mapping between our modules and transformers' Llama names


def hf_weight_names(cfg: ModelConfig) -> dict[str, str]:
    """Map each of our parameter names to its transformers Llama name."""
    names = {"embed.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight"}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    parts = {
        "attn_norm.weight": "input_layernorm.weight",
        "mlp_norm.weight": "post_attention_layernorm.weight",
        "attn.q_proj.weight": "self_attn.q_proj.weight",
        "attn.k_proj.weight": "self_attn.k_proj.weight",
        "attn.v_proj.weight": "self_attn.v_proj.weight",
        "attn.o_proj.weight": "self_attn.o_proj.weight",
        "mlp.gate_proj.weight": "mlp.gate_proj.weight",
        "mlp.up_proj.weight": "mlp.up_proj.weight",
        "mlp.down_proj.weight": "mlp.down_proj.weight",
    }
    for layer in range(cfg.n_layers):
        for ours, theirs in parts.items():
            names[f"blocks.{layer}.{ours}"] = f"model.layers.{layer}.{theirs}"
    return names


def is_norm_gain(name: str) -> bool:
    return name.endswith("attn_norm.weight") or name.endswith("mlp_norm.weight")


def layer_of(name: str) -> int:
    return int(name.split(".")[1])


def export_state_dict(model: DepthcurseLM) -> dict[str, torch.Tensor]:
    """Return the weights under Llama names, LayerNorm Scaling folded into the gains."""
    own = dict(model.named_parameters())
    exported: dict[str, torch.Tensor] = {}
    for ours, theirs in hf_weight_names(model.cfg).items():
        tensor = own[ours].detach()
        if model.cfg.ln_scaling and is_norm_gain(ours):
            tensor = tensor * model.norm_scale(layer_of(ours))
        exported[theirs] = tensor.to("cpu").contiguous().clone()
    return exported


def llama_config(cfg: ModelConfig, tokenizer_ids: dict[str, int] | None = None) -> dict[str, Any]:
    """Return a transformers `LlamaConfig` dict equivalent to `cfg`."""
    ids = tokenizer_ids or {}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_mlp,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.d_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": cfg.init_std,
        "torch_dtype": "float32",
        "bos_token_id": ids.get("bos_token_id"),
        "eos_token_id": ids.get("eos_token_id"),
        "pad_token_id": ids.get("pad_token_id"),
    }


# ---------------------------------------------------------------------------
# Atomic folder writes


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Create folder `target` with `write(tmp_folder)`, atomically.

    `write` fills a temporary sibling folder; it is fsynced and renamed to
    `target`. An existing `target` is first renamed aside and deleted only
    after the new folder is in place, so at every instant either the old or
    the new complete folder exists under a name that `recover_dir` restores.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
        old = target.parent / f".{target.name}.old"
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            os.rename(target, old)
        os.rename(tmp, target)
        _fsync_dir(target.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def recover_dir(target: Path) -> None:
    """Restore `target` from its `.old` copy if a crash hit between the two renames."""
    old = target.parent / f".{target.name}.old"
    if not target.exists() and old.exists():
        os.rename(old, target)


# ---------------------------------------------------------------------------
# Save


def git_revision() -> str:
    """Return the git commit of the package source, or "unknown" outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def save_checkpoint(
    path: str | Path,
    model: DepthcurseLM,
    *,
    tokenizer_file: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write `model` as a checkpoint folder at `path`, atomically.

    `metadata` is merged into `depthcurse.json`; the usual keys are `step`,
    `tokens_seen`, `seed`, `stage`, `growth_history` and `layer_sources`
    (the source-layer index of every layer, identity when absent).
    """
    path = Path(path)
    cfg = model.cfg
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_config": cfg.to_dict(),
        "step": 0,
        "tokens_seen": 0,
        "seed": None,
        "stage": None,
        "growth_history": [],
        "layer_sources": list(range(cfg.n_layers)),
        "depthcurse_version": __version__,
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
    }
    meta.update(metadata or {})
    if len(meta["layer_sources"]) != cfg.n_layers:
        raise CheckpointError(
            f"layer_sources has {len(meta['layer_sources'])} entries but the model has {cfg.n_layers} layers"
        )
    tokenizer_ids: dict[str, int] = {}
    if tokenizer_file is not None:
        tokenizer_ids = _special_token_ids(Path(tokenizer_file))

    def write(folder: Path) -> None:
        save_file(export_state_dict(model), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        _write_json(folder / HF_CONFIG_FILE, llama_config(cfg, tokenizer_ids))
        _write_json(folder / META_FILE, meta)
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, folder / TOKENIZER_FILE)
            _write_json(folder / TOKENIZER_CONFIG_FILE, _tokenizer_config(Path(tokenizer_file)))
        if training_state is not None:
            state = dict(training_state)
            if cfg.ln_scaling:
                state["ln_scaling_gains"] = {
                    name: p.detach().cpu().clone()
                    for name, p in model.named_parameters()
                    if is_norm_gain(name)
                }
            torch.save(state, folder / TRAINING_STATE_FILE)

    return atomic_write_dir(path, write)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _special_token_ids(tokenizer_file: Path) -> dict[str, int]:
    """Return bos/eos/pad ids from a tokenizers JSON file's special tokens."""
    data = json.loads(tokenizer_file.read_text())
    specials = {tok["content"]: tok["id"] for tok in data.get("added_tokens", []) if tok.get("special")}
    ids: dict[str, int] = {}
    for content, token_id in specials.items():
        if content in ("<|endoftext|>", "</s>", "<eos>"):
            ids.setdefault("eos_token_id", token_id)
            ids.setdefault("bos_token_id", token_id)
        if content in ("<s>", "<|im_start|>", "<bos>"):
            ids["bos_token_id"] = token_id
        if content in ("<pad>", "<|pad|>"):
            ids["pad_token_id"] = token_id
    return ids


def _tokenizer_config(tokenizer_file: Path) -> dict[str, Any]:
    data = json.loads(tokenizer_file.read_text())
    specials = [tok["content"] for tok in data.get("added_tokens", []) if tok.get("special")]
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False}
    if "<|endoftext|>" in specials:
        config.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    return config


# ---------------------------------------------------------------------------
# Load


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Return the parsed `depthcurse.json` of a checkpoint folder."""
    folder = Path(path)
    recover_dir(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{folder} has no {META_FILE}: it is not a depthcurse checkpoint "
            f"(use depthcurse.load for Hugging Face folders)"
        )
    try:
        return json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_path} is not valid JSON ({err}); the checkpoint is corrupt") from err


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[DepthcurseLM, dict[str, Any]]:
    """Load a checkpoint folder into our training model; return (model, metadata)."""
    folder = Path(path)
    meta = read_metadata(folder)
    try:
        cfg = ModelConfig.from_dict(meta["model_config"])
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"{folder / META_FILE}: invalid model_config ({err})") from err
    weights = load_exported_weights(folder, cfg)
    model = DepthcurseLM(cfg)
    names = hf_weight_names(cfg)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for ours, theirs in names.items():
            tensor = weights[theirs]
            if cfg.ln_scaling and is_norm_gain(ours):
                tensor = tensor / model.norm_scale(layer_of(ours))
            own[ours].copy_(tensor)
        state_path = folder / TRAINING_STATE_FILE
        if cfg.ln_scaling and state_path.is_file():
            gains = load_training_state(folder).get("ln_scaling_gains", {})
            for name, tensor in gains.items():
                own[name].copy_(tensor)
    return model.to(device), meta


def load_exported_weights(folder: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Read `model.safetensors`, checking every tensor's presence, shape and values."""
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} is missing; the checkpoint is incomplete")
    expected = expected_shapes(cfg)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            present = set(handle.keys())
            for name, shape in expected.items():
                if name not in present:
                    raise CheckpointError(
                        f"{weights_path}: tensor {name} is missing (the config expects {cfg.n_layers} layers)"
                    )
                tensor = handle.get_tensor(name)
                if tuple(tensor.shape) != shape:
                    raise CheckpointError(
                        f"{weights_path}: tensor {name} has shape {tuple(tensor.shape)} but the config "
                        f"expects {shape}; the config does not match the weights"
                    )
                if not torch.isfinite(tensor).all():
                    raise CheckpointError(
                        f"{weights_path}: tensor {name} contains NaN or Inf values; training "
                        f"diverged or the file is corrupt, so load an earlier checkpoint"
                    )
                tensors[name] = tensor.float()
    except SafetensorError as err:
        raise CheckpointError(f"{weights_path} cannot be read ({err}); the file is truncated or corrupt") from err
    return tensors


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, h = cfg.d_model, cfg.d_head
    per_layer = {
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (cfg.n_heads * h, d),
        "self_attn.k_proj.weight": (cfg.n_kv_heads * h, d),
        "self_attn.v_proj.weight": (cfg.n_kv_heads * h, d),
        "self_attn.o_proj.weight": (d, cfg.n_heads * h),
        "mlp.gate_proj.weight": (cfg.d_mlp, d),
        "mlp.up_proj.weight": (cfg.d_mlp, d),
        "mlp.down_proj.weight": (d, cfg.d_mlp),
    }
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,)}
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    for layer in range(cfg.n_layers):
        for name, shape in per_layer.items():
            shapes[f"model.layers.{layer}.{name}"] = shape
    return shapes


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Return the resumable training state saved beside a checkpoint."""
    state_path = Path(path) / TRAINING_STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path} is missing: this checkpoint cannot be resumed")
    try:
        return torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for corrupt files
        raise CheckpointError(f"{state_path} cannot be read ({err}); the file is truncated or corrupt") from err
