"""The compact trainer: growth stages, AdamW, evaluation, checkpoints, exact resume.

One run trains a model from one block of layers (or at full depth for the
``none`` baseline) to the target depth. The total step count is the
baseline's; the PROP-alpha schedule of MIDAS (Saunshi et al. 2024, arXiv
2409.19044) splits it into stages, and at each stage boundary a growth
operator from `depthcurse.growth` inserts one block of copied layers. The
learning-rate schedule runs on the global step across stages.

A run folder contains

- ``run.json``: the resolved `TrainConfig`, the model config, the stage plan
  and the versions that started the run;
- ``metrics.jsonl``: one JSON object per line, ``kind`` = ``train`` (step,
  tokens, loss, lr, grad_norm, tokens_per_s, mfu, step_cpu_s: the process's
  CPU seconds per step, all threads), ``eval`` (val_loss) or
  ``growth`` (depth before and after, seconds the growth took);
- ``train.log``: the text log;
- ``checkpoints/step-XXXXXX/``: checkpoint folders (see `depthcurse.checkpoint`)
  written at intervals, at the end of every stage and at the end of the run.
  Each carries the training state needed to resume.

Run it as ``depthcurse train ...`` or, for several processes with DDP,
``torchrun --nproc_per_node N -m depthcurse.train ...``.
"""

from __future__ import annotations

import os

# Passive OpenMP threads, set before torch starts its pool (see depthcurse.cli).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from depthcurse import __version__  # noqa: E402
from depthcurse.checkpoint import (  # noqa: E402
    META_FILE,
    TRAINING_STATE_FILE,
    WEIGHTS_FILE,
    git_revision,
    load_checkpoint,
    load_training_state,
    recover_dir,
    save_checkpoint,
)
from depthcurse.config import ConfigError, ModelConfig  # noqa: E402
from depthcurse.growth import (  # noqa: E402
    Lineage,
    check_depth,
    compute_fraction,
    flops_per_token,
    grow_model,
    optimizer_state_by_name,
    plan_growth,
    stage_boundaries,
    stage_depths,
    stage_lengths,
    transfer_optimizer_state,
)
from depthcurse.hardware import (  # noqa: E402
    device_description,
    peak_flops,
    physical_cores,
    retain_freed_memory,
)
from depthcurse.model import DepthcurseLM  # noqa: E402
from depthcurse.train_config import (  # noqa: E402, F401 (TrainConfig helpers are part of this API)
    TrainConfig,
    apply_override,
    build_config,
    load_recipe,
    parse_override,
)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")


class TrainError(RuntimeError):
    """Training cannot start or continue: a run-folder conflict, divergence, or missing state."""


# ---------------------------------------------------------------------------
# Stage plan and learning rate


@dataclass(frozen=True)
class StagePlan:
    """Depth and length of every stage; stages are numbered from 1."""

    depths: list[int]
    lengths: list[int]

    @property
    def boundaries(self) -> list[int]:
        """Global steps at which stages 2, 3, ... start (growth happens before that step)."""
        return stage_boundaries(self.lengths)

    def stage_at(self, step: int) -> int:
        """Return the 1-based stage that performs optimizer step `step` (0-based)."""
        return 1 + sum(step >= b for b in self.boundaries)

    def describe(self) -> str:
        starts = [0, *self.boundaries]
        return ", ".join(
            f"stage {i + 1}: depth {d}, steps {s}-{s + n - 1}"
            for i, (d, n, s) in enumerate(zip(self.depths, self.lengths, starts, strict=True))
        )


def make_stage_plan(cfg: TrainConfig, model_cfg: ModelConfig) -> StagePlan:
    """Return the stage plan of a resolved config, checking depth, block size and schedule."""
    target = model_cfg.n_layers
    if cfg.growth == "none":
        lengths = stage_lengths(cfg.max_steps, 1, explicit=cfg.stage_steps)
        return StagePlan([target], lengths)
    assert cfg.block_size is not None
    check_depth(target, cfg.block_size)
    depths = stage_depths(target, cfg.block_size, cfg.initial_depth)
    if len(depths) > 1:
        plan_growth(cfg.growth, depths[0], cfg.block_size, lidas_odd=cfg.lidas_odd)
    lengths = stage_lengths(cfg.max_steps, len(depths), cfg.alpha, explicit=cfg.stage_steps)
    return StagePlan(depths, lengths)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Return the learning rate of optimizer step `step` (0-based, global across stages)."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    decay_start = max(cfg.warmup_steps, round(cfg.max_steps * (1.0 - cfg.decay_fraction)))
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start + 1) / max(1, cfg.max_steps - decay_start))
    return peak + (floor - peak) * progress


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Return AdamW with weight decay on matrices only (not on norm gains).

    The fused implementation is used on CPU as well as CUDA (torch 2.13 has
    both): it updates each tensor in one kernel instead of several elementwise ops.
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused or None
    )


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, by_name: dict[str, dict[str, Any]]
) -> None:
    """Load per-parameter state keyed by parameter name, through the optimizer's own loader."""
    index = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            index[id(param)] = len(index)
    missing = [name for name, _ in model.named_parameters() if name not in by_name]
    if missing:
        raise TrainError(f"the saved optimizer state lacks parameters {missing[:3]}...; it does not fit this model")
    state = optimizer.state_dict()
    state["state"] = {index[id(p)]: by_name[name] for name, p in model.named_parameters()}
    optimizer.load_state_dict(state)


# ---------------------------------------------------------------------------
# Run folder


def checkpoint_folders(out: Path) -> list[tuple[int, Path]]:
    """Return the complete checkpoints of a run as (step, folder), oldest first.

    Only folders named ``step-N`` with weights, metadata and training state
    count, so a temporary folder left by a killed write is never picked.
    """
    root = out / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    for old in root.glob(".step-*.old"):
        recover_dir(root / old.name[1:].removesuffix(".old"))
    found = []
    for folder in root.iterdir():
        match = CHECKPOINT_NAME.match(folder.name)
        required = (META_FILE, WEIGHTS_FILE, TRAINING_STATE_FILE)
        if match and folder.is_dir() and all((folder / name).is_file() for name in required):
            found.append((int(match.group(1)), folder))
    return sorted(found)


def latest_checkpoint(out: str | Path) -> Path | None:
    """Return the newest complete checkpoint folder of a run, or None."""
    folders = checkpoint_folders(Path(out))
    return folders[-1][1] if folders else None


# Keys that may change when a run resumes: they do not change the trained weights.
RESUME_MUTABLE = frozenset(
    {"eval_interval", "eval_batches", "checkpoint_interval", "log_interval", "device",
     "compile", "threads", "malloc_retain", "peak_flops", "progress"}
)


def saved_config(out: str | Path) -> dict[str, Any] | None:
    """Return the TrainConfig dict saved in a run folder, or None when there is no run."""
    run_file = Path(out) / RUN_FILE
    if not run_file.is_file():
        return None
    try:
        return json.loads(run_file.read_text())["config"]
    except (json.JSONDecodeError, KeyError) as err:
        raise TrainError(f"{run_file} is unreadable ({err}); choose a new --out folder") from err


def check_run_folder(out: Path, cfg: TrainConfig, resume: bool) -> None:
    """Raise TrainError unless `out` is new or empty, or contains this same run and `resume` is set."""
    saved = saved_config(out)
    if saved is None:
        if resume:
            raise TrainError(
                f"cannot resume: {out} contains no run ({RUN_FILE} not found); drop --resume to start one"
            )
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise TrainError(
                f"{out} already exists and is not an empty folder; choose a new --out folder"
            )
        return
    if not resume:
        raise TrainError(
            f"{out} already contains a training run; pass --resume to continue it, or choose a new "
            f"--out folder (runs are never overwritten)"
        )
    current = cfg.to_dict()
    changed = [
        key for key in sorted(set(saved) | set(current))
        if key not in RESUME_MUTABLE and saved.get(key) != current.get(key)
    ]
    if changed:
        details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in changed)
        raise TrainError(
            f"cannot resume the run in {out} with a different config ({details}); resume with the "
            f"saved settings or start a new run in another folder"
        )


# ---------------------------------------------------------------------------
# Runtime: threads, devices, processes


@dataclass
class Runtime:
    device: torch.device
    rank: int
    local_rank: int
    world_size: int
    threads: int
    autocast_dtype: torch.dtype | None
    compile: bool
    retains_freed_memory: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def default_threads(deterministic: bool) -> int:
    """Return the CPU threads per process when the config leaves them unset."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    if deterministic:
        return 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, physical_cores() // local)


def start_runtime(cfg: TrainConfig) -> Runtime:
    """Set threads and determinism, join the process group under torchrun, pick the device."""
    threads = cfg.threads or default_threads(cfg.deterministic)
    torch.set_num_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    elif cfg.device == "cuda" and world > 1:
        device = torch.device(f"cuda:{local_rank}")
    else:
        device = torch.device(cfg.device)

    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"device={cfg.device!r} requested but CUDA is not available; use device=cpu")
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)

    if cfg.dtype == "auto":
        autocast = torch.bfloat16 if device.type == "cuda" else None
    else:
        autocast = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    use_compile = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    # On CPU, activations are allocated afresh every step, so keep freed memory for reuse.
    retains = retain_freed_memory() if device.type == "cpu" and cfg.malloc_retain else False
    return Runtime(device, rank, local_rank, world, threads, autocast, use_compile, retains)


def _all_reduce_mean(value: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.distributed:
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.SUM)
        value = value / runtime.world_size
    return value


def _barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        torch.distributed.barrier()


# ---------------------------------------------------------------------------
# Data


def default_data_dir(cfg: TrainConfig, vocab_size: int) -> Path:
    """Return the cache folder for the prepared corpus of a config without data_dir."""
    root = Path(os.environ.get("DEPTHCURSE_CACHE", "~/.cache/depthcurse")).expanduser()
    if cfg.source is None:
        name = "default"
    else:
        import hashlib

        name = "source-" + hashlib.sha256(str(cfg.source).encode()).hexdigest()[:12]
    return root / "data" / f"{name}-vocab{vocab_size}"


def open_data(cfg: TrainConfig, model_cfg: ModelConfig, runtime: Runtime) -> tuple[Any, Any, Path]:
    """Return the (train, val) token stores and the data folder, preparing it when needed."""
    from depthcurse.data import open_tokens, prepare_data

    if cfg.data_dir is not None:
        folder = Path(cfg.data_dir)
        if not (folder / "train.bin").is_file():
            if cfg.source is None and not folder.exists():
                raise TrainError(
                    f"data_dir {folder} not found; prepare it with depthcurse.data.prepare_data "
                    f"or leave data_dir unset to use the default corpus"
                )
            if runtime.is_main:
                prepare_data(folder, cfg.source, vocab_size=model_cfg.vocab_size)
    else:
        folder = default_data_dir(cfg, model_cfg.vocab_size)
        if runtime.is_main:
            prepare_data(folder, cfg.source, vocab_size=model_cfg.vocab_size)
    _barrier(runtime)
    train_store = open_tokens(folder / "train.bin")
    val_store = open_tokens(folder / "val.bin")
    for store in (train_store, val_store):
        if store.vocab_size > model_cfg.vocab_size:
            raise ConfigError(
                f"{store.path} uses a vocabulary of {store.vocab_size} tokens but the model has "
                f"vocab_size={model_cfg.vocab_size}; set model.vocab_size={store.vocab_size}"
            )
        needed = cfg.seq_len + 1
        if len(store) < needed:
            raise TrainError(
                f"the corpus is too small: {store.path} has {len(store)} tokens but one sequence "
                f"of seq_len={cfg.seq_len} needs {needed}; use a larger corpus or a smaller seq_len"
            )
    return train_store, val_store, folder


# ---------------------------------------------------------------------------
# The trainer


def new_window() -> dict[str, Any]:
    """Return empty sums for one metrics line: loss, grad norm, steps, timed seconds and tokens.

    ``time`` is wall-clock and ``cpu_time`` the process's CPU time, both over
    the timed steps only.
    """
    return {"loss": 0.0, "grad_norm": 0.0, "steps": 0, "time": 0.0, "cpu_time": 0.0, "tokens": 0}


@dataclass
class TrainResult:
    """Outcome of `train`: where the run is and how it ended."""

    out: Path
    step: int
    tokens_seen: int
    val_loss: float | None
    checkpoints: list[Path]


class Trainer:
    """One training run in one process (one rank under torchrun)."""

    def __init__(self, cfg: TrainConfig, out: Path, resume: bool, runtime: Runtime) -> None:
        from depthcurse.data import BatchSampler

        self.cfg = cfg
        self.out = out
        self.runtime = runtime
        self.model_cfg = cfg.model_config()
        self.plan = make_stage_plan(cfg, self.model_cfg)
        check_run_folder(out, cfg, resume)
        _barrier(runtime)
        self.train_store, self.val_store, self.data_dir = open_data(cfg, self.model_cfg, runtime)
        tokenizer = self.data_dir / "tokenizer.json"
        self.tokenizer_file = tokenizer if tokenizer.is_file() else None
        self.sampler = BatchSampler(
            self.train_store, cfg.batch_size, cfg.seq_len, cfg.seed,
            rank=runtime.rank, world_size=runtime.world_size,
        )
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len * runtime.world_size
        self.step = 0
        self.tokens_seen = 0
        self.stage = 1
        self.resumed_from: Path | None = None
        self.window = new_window()
        checkpoint = latest_checkpoint(out) if resume else None
        if checkpoint is None:
            torch.manual_seed(cfg.seed)
            self.model = DepthcurseLM(self.model_cfg.replace(n_layers=self.plan.depths[0]))
            self.model.to(runtime.device)
            self.lineage = Lineage.initial(self.plan.depths[0])
            self.optimizer = build_optimizer(self.model, cfg, runtime.device)
        else:
            self._restore(checkpoint)
        self._wrap()
        self.val_loss: float | None = None
        self.checkpoints: list[Path] = []

    # -- state ------------------------------------------------------------

    def _restore(self, folder: Path) -> None:
        """Continue from checkpoint `folder`: weights, optimizer, sampler, RNG, stage, lineage."""
        model, meta = load_checkpoint(folder, device=self.runtime.device)
        state = load_training_state(folder)
        self.model = model
        self.step = int(meta["step"])
        self.tokens_seen = int(meta["tokens_seen"])
        self.stage = int(meta["stage"])
        self.lineage = Lineage.from_history(self.plan.depths[0], meta["growth_history"])
        if self.lineage.layer_ids != meta["layer_ids"] or model.n_layers != self.plan.depths[self.stage - 1]:
            raise TrainError(
                f"checkpoint {folder} does not match the stage plan (depth {model.n_layers}, "
                f"stage {self.stage}); it belongs to another run"
            )
        self.optimizer = build_optimizer(self.model, self.cfg, self.runtime.device)
        load_optimizer_state(self.optimizer, self.model, state["optimizer"])
        if "base" in state["sampler"]:  # saved during the cooldown: a MixtureSampler state
            self.start_cooldown()
        self.sampler.load_state_dict(state["sampler"])
        # The metric window open at the checkpoint, so a resumed run logs the same means.
        self.window.update(state["log_window"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.runtime.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.runtime.device)
        self.resumed_from = folder

    def _training_state(self) -> dict[str, Any]:
        by_name = optimizer_state_by_name(self.optimizer, self.model)
        rng = {"torch": torch.get_rng_state()}
        if self.runtime.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.runtime.device)
        return {
            "optimizer": {
                name: {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in s.items()}
                for name, s in by_name.items()
            },
            "sampler": self.sampler.state_dict(),
            "rng": rng,
            "log_window": {key: self.window[key] for key in ("loss", "grad_norm", "steps")},
        }

    def _wrap(self) -> None:
        """Wrap the model for this stage: DDP under torchrun, then torch.compile when enabled."""
        if getattr(self, "ddp", None) is not None:
            # Free the previous stage's DDP wrapper now: its reducer's gradient
            # hooks stay on the surviving parameters until it is destroyed.
            self.ddp = self.runner = None
            gc.collect()
        runner: nn.Module = self.model
        if self.runtime.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
            runner = DistributedDataParallel(self.model, device_ids=ids)
        self.ddp = runner if self.runtime.distributed else None
        if self.runtime.compile:
            # Drop the previous stage's graphs: the grown model compiles afresh,
            # and stale cache entries would count towards dynamo's recompile limit.
            torch._dynamo.reset()
            runner = torch.compile(runner)
        self.runner = runner
        self.warm = not self.runtime.compile

    # -- one step ---------------------------------------------------------

    def _autocast(self) -> Any:
        if self.runtime.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.runtime.device.type, dtype=self.runtime.autocast_dtype)

    def train_step(self) -> tuple[float, float, float]:
        """Run one optimizer step; return (mean loss, gradient norm before clipping, lr)."""
        cfg, device = self.cfg, self.runtime.device
        lr = learning_rate(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x, y = next(self.sampler)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            last = micro == cfg.grad_accum - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else nullcontext()
            with sync:
                with self._autocast():
                    logits = self.runner(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                (loss / cfg.grad_accum).backward()
            total += loss.detach()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        mean_loss = _all_reduce_mean(total / cfg.grad_accum, self.runtime)
        loss_value, norm_value = float(mean_loss), float(grad_norm)
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            self.optimizer.zero_grad(set_to_none=True)
            self._diverged(loss_value, norm_value)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value, lr

    def _diverged(self, loss: float, grad_norm: float) -> None:
        last = latest_checkpoint(self.out)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainError(
            f"training stopped at step {self.step} (stage {self.stage}): the loss is {loss} and the "
            f"gradient norm {grad_norm}, so the run diverged; {kept}. Start a new run with a lower "
            f"lr (now {self.cfg.lr}) or a smaller grad_clip (now {self.cfg.grad_clip})."
        )

    @torch.no_grad()
    def evaluate(self) -> float:
        """Return the mean held-out loss per token over the first eval_batches validation batches."""
        from depthcurse.data import eval_batches

        self.model.eval()
        device = self.runtime.device
        totals = torch.zeros(2, device=device, dtype=torch.float64)
        batches = eval_batches(self.val_store, self.cfg.batch_size, self.cfg.seq_len,
                               max_batches=self.cfg.eval_batches)
        for index, (x, y) in enumerate(batches):
            if index % self.runtime.world_size != self.runtime.rank:
                continue
            x, y = x.to(device), y.to(device)
            with self._autocast():
                logits = self.model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
            totals += torch.stack([loss.double(), torch.tensor(float(y.numel()), device=device, dtype=torch.float64)])
        if self.runtime.distributed:
            torch.distributed.all_reduce(totals)
        self.model.train()
        return float(totals[0] / totals[1])

    # -- growth and checkpoints ---------------------------------------------

    def grow(self) -> dict[str, Any]:
        """Insert the next block of copied layers and rebuild the optimizer around it."""
        started = time.perf_counter()
        depth = self.model.n_layers
        plan = plan_growth(self.cfg.growth, depth, self.cfg.block_size, lidas_odd=self.cfg.lidas_odd)
        old_state = optimizer_state_by_name(self.optimizer, self.model)
        grow_model(self.model, plan)
        self.stage += 1
        event = self.lineage.apply(plan, stage=self.stage, step=self.step)
        self.optimizer = build_optimizer(self.model, self.cfg, self.runtime.device)
        transfer_optimizer_state(old_state, self.optimizer, self.model, plan,
                                 copy_moments=self.cfg.copy_moments)
        self._wrap()
        return {
            "kind": "growth", "step": self.step, "stage": self.stage,
            "depth_before": depth, "depth_after": self.model.n_layers,
            "sources": [layer["source_index_before"] for layer in event["new_layers"]],
            "seconds": time.perf_counter() - started,
        }

    @property
    def in_cooldown(self) -> bool:
        return hasattr(self.sampler, "describe")

    def start_cooldown(self) -> dict[str, Any]:
        """Switch to the cooldown mix: default corpus plus generated primitive text, by weight."""
        from depthcurse.data import load_tokenizer, separator_id
        from depthcurse.evals import MixtureSampler, primitive_tokens

        if self.tokenizer_file is None:
            raise TrainError(
                f"the cooldown mix needs {self.data_dir / 'tokenizer.json'} to encode generated "
                "text; prepare the data folder with depthcurse.data.prepare_data"
            )
        tokenizer = load_tokenizer(self.tokenizer_file)
        generated = primitive_tokens(
            tokenizer, separator_id(tokenizer, self.tokenizer_file), self.cfg.cooldown_documents,
            seed=self.cfg.seed,
        )
        weight = self.cfg.cooldown_weight
        self.sampler = MixtureSampler(
            self.sampler, {"primitives": generated}, {"corpus": 1 - weight, "primitives": weight}
        )
        return {"kind": "cooldown", "step": self.step, **self.sampler.describe()}

    def save(self) -> Path:
        """Write checkpoint ``step-XXXXXX`` (rank 0) and return its folder."""
        folder = self.out / CHECKPOINT_DIR / f"step-{self.step:06d}"
        if self.runtime.is_main:
            metadata = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "seed": self.cfg.seed,
                "stage": self.stage,
                "initial_depth": self.plan.depths[0],
                "train_config": self.cfg.to_dict(),
                **self.lineage.to_metadata(),
                **({"data_mix": self.sampler.describe()} if self.in_cooldown else {}),
            }
            save_checkpoint(folder, self.model, tokenizer_file=self.tokenizer_file,
                            metadata=metadata, training_state=self._training_state())
        _barrier(self.runtime)
        if folder not in self.checkpoints:
            self.checkpoints.append(folder)
        return folder


# ---------------------------------------------------------------------------
# Logging


class RunLog:
    """Text log (stdout and train.log) and metrics.jsonl, written by rank 0 only."""

    def __init__(self, out: Path, enabled: bool, resume_step: int | None) -> None:
        self.enabled = enabled
        self.out = out
        self.bar: Any = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.metrics_path = out / METRICS_FILE
        if resume_step is not None:
            self._truncate_metrics(resume_step)
        self.text = open(out / LOG_FILE, "a", buffering=1)
        self.metrics = open(self.metrics_path, "a", buffering=1)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines written after checkpoint `step` by a run that was killed."""
        if not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            # A checkpoint at a stage boundary precedes that growth, so the resumed run logs it again.
            last = step - 1 if record.get("kind") == "growth" else step
            if record.get("step", 0) <= last:
                kept.append(line)
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)
        self.text.write(text + "\n")

    def record(self, values: dict[str, Any]) -> None:
        if self.enabled:
            self.metrics.write(json.dumps(values) + "\n")

    def close(self) -> None:
        if self.enabled:
            if self.bar is not None:
                self.bar.close()
            self.text.close()
            self.metrics.close()


def run_header(trainer: Trainer) -> list[str]:
    """Return the log header: versions, device, resolved config, stages and compute fraction."""
    rt, cfg, model_cfg, plan = trainer.runtime, trainer.cfg, trainer.model_cfg, trainer.plan
    fraction = compute_fraction(model_cfg, plan.depths, plan.lengths, cfg.seq_len)
    layer_fraction = compute_fraction(model_cfg, plan.depths, plan.lengths, cfg.seq_len, layers_only=True)
    warnings = []
    if cfg.warmup_steps >= cfg.max_steps:
        warnings.append(
            f"warning: warmup_steps ({cfg.warmup_steps}) >= max_steps ({cfg.max_steps}), so the "
            f"learning rate never reaches its peak lr={cfg.lr}; lower it with --set warmup_steps=N"
        )
    return [
        f"depthcurse {__version__} | git {git_revision()} | torch {torch.__version__} | "
        f"python {sys.version.split()[0]}",
        f"device {device_description(rt.device)} | processes {rt.world_size} | threads {rt.threads} | "
        f"autocast {rt.autocast_dtype or 'off'} | compile {'on' if rt.compile else 'off'} | "
        f"deterministic {cfg.deterministic} | malloc keeps freed memory {rt.retains_freed_memory}",
        f"config {json.dumps(cfg.to_dict())}",
        f"model {json.dumps(model_cfg.to_dict())} ({model_cfg.param_count():,} parameters at full depth)",
        f"data {trainer.data_dir}: {len(trainer.train_store):,} train and {len(trainer.val_store):,} val tokens",
        f"global batch {trainer.tokens_per_step:,} tokens/step; {plan.describe()}",
        f"compute: this schedule uses {fraction:.3f} of the full-depth baseline's training FLOPs "
        f"({layer_fraction:.3f} of its layer FLOPs)",
    ] + warnings


# ---------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, out: str | Path, *, resume: bool = False) -> TrainResult:
    """Train (or, with `resume`, continue) the run in folder `out` and return how it ended."""
    cfg = cfg.resolved()
    out = Path(out)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    runtime = start_runtime(cfg)
    try:
        trainer = Trainer(cfg, out, resume, runtime)
        log = RunLog(out, runtime.is_main, trainer.step if resume else None)
        try:
            return _fit(trainer, log)
        finally:
            log.close()
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)


def _write_run_file(trainer: Trainer) -> None:
    run_file = trainer.out / RUN_FILE
    if run_file.exists():
        return
    info = {
        "config": trainer.cfg.to_dict(),
        "model_config": trainer.model_cfg.to_dict(),
        "stages": {"depths": trainer.plan.depths, "lengths": trainer.plan.lengths},
        "data_dir": str(trainer.data_dir),
        "depthcurse_version": __version__,
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "world_size": trainer.runtime.world_size,
    }
    tmp = run_file.with_name(run_file.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, run_file)


def _fit(trainer: Trainer, log: RunLog) -> TrainResult:
    cfg, rt, plan = trainer.cfg, trainer.runtime, trainer.plan
    if rt.is_main:
        _write_run_file(trainer)
    for text in run_header(trainer):
        log.line(text)
    if trainer.resumed_from is not None:
        log.line(f"resumed from {trainer.resumed_from} at step {trainer.step}")
    if rt.is_main and cfg.progress:
        from tqdm.auto import tqdm

        log.bar = tqdm(total=cfg.max_steps, initial=trainer.step, dynamic_ncols=True, file=sys.stderr)

    peak, peak_source = (cfg.peak_flops, "peak_flops setting") if cfg.peak_flops else peak_flops(
        rt.device, rt.threads
    )
    log.line(f"MFU peak: {f'{peak:.3g} FLOP/s' if peak else 'unknown'} per device ({peak_source})")
    window = trainer.window
    while trainer.step < cfg.max_steps:
        while plan.stage_at(trainer.step) > trainer.stage:
            event = trainer.grow()
            log.record(event)
            log.line(
                f"step {trainer.step}: grew {cfg.growth} from depth {event['depth_before']} to "
                f"{event['depth_after']} (stage {event['stage']}/{len(plan.depths)}, copied layers "
                f"{event['sources']}) in {event['seconds']:.3f} s"
            )
        cooldown_start = cfg.cooldown_start()
        if cooldown_start is not None and trainer.step >= cooldown_start and not trainer.in_cooldown:
            event = trainer.start_cooldown()
            log.record(event)
            log.line(f"step {trainer.step}: cooldown mix {event['weights']} ({event['tokens']} tokens)")
        started, cpu_started = time.perf_counter(), time.process_time()
        loss, grad_norm, lr = trainer.train_step()
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        elapsed = time.perf_counter() - started
        cpu_elapsed = time.process_time() - cpu_started
        trainer.step += 1
        trainer.tokens_seen += trainer.tokens_per_step
        window["loss"] += loss
        window["grad_norm"] += grad_norm
        window["steps"] += 1
        if trainer.warm:  # the first step after torch.compile includes compile time
            window["time"] += elapsed
            window["cpu_time"] += cpu_elapsed
            window["tokens"] += trainer.tokens_per_step
        trainer.warm = True
        if log.bar is not None:
            log.bar.update(1)
            log.bar.set_postfix(loss=f"{loss:.3f}", stage=trainer.stage, refresh=False)

        step = trainer.step
        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            _log_window(trainer, log, window, lr, peak)
            window = trainer.window = new_window()
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            trainer.val_loss = trainer.evaluate()
            log.record({"kind": "eval", "step": step, "tokens": trainer.tokens_seen,
                        "stage": trainer.stage, "val_loss": trainer.val_loss})
            log.line(f"step {step}: val_loss {trainer.val_loss:.4f}")
        if step % cfg.checkpoint_interval == 0 or step in plan.boundaries or step == cfg.max_steps:
            folder = trainer.save()
            log.line(f"step {step}: saved {folder}")
    if trainer.val_loss is None and trainer.step == cfg.max_steps:
        trainer.val_loss = trainer.evaluate()
    final = latest_checkpoint(trainer.out) if rt.is_main else None
    if final is not None and final not in trainer.checkpoints:
        trainer.checkpoints.append(final)
    return TrainResult(trainer.out, trainer.step, trainer.tokens_seen, trainer.val_loss,
                       trainer.checkpoints)


def _log_window(trainer: Trainer, log: RunLog, window: dict[str, Any], lr: float, peak: float | None) -> None:
    steps = window["steps"]
    tokens_per_s = window["tokens"] / window["time"] if window["time"] > 0 else None
    timed_steps = window["tokens"] / trainer.tokens_per_step
    step_cpu_s = window["cpu_time"] / timed_steps if timed_steps else None
    mfu = None
    if tokens_per_s is not None and peak:
        per_token = flops_per_token(trainer.model_cfg, trainer.model.n_layers, trainer.cfg.seq_len)
        mfu = per_token * tokens_per_s / (peak * trainer.runtime.world_size)
    record = {
        "kind": "train", "step": trainer.step, "tokens": trainer.tokens_seen,
        "stage": trainer.stage, "depth": trainer.model.n_layers,
        "loss": window["loss"] / steps, "lr": lr, "grad_norm": window["grad_norm"] / steps,
        "tokens_per_s": tokens_per_s, "mfu": mfu, "step_cpu_s": step_cpu_s,
    }
    log.record(record)
    speed = f"{tokens_per_s:,.0f} tok/s" if tokens_per_s is not None else "warming up"
    mfu_text = f"{100 * mfu:.2f}%" if mfu is not None else "n/a"
    log.line(
        f"step {trainer.step}/{trainer.cfg.max_steps} | stage {trainer.stage} depth "
        f"{trainer.model.n_layers} | loss {record['loss']:.4f} | lr {lr:.2e} | grad "
        f"{record['grad_norm']:.3f} | {speed} | mfu {mfu_text}"
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m depthcurse.train`` (and torchrun): the ``depthcurse train`` options."""
    from depthcurse.cli import app

    app(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
