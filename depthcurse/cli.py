"""The `depthcurse` command line: train, analyze, compare, reproduce."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

# Passive OpenMP threads: on a shared 2-core machine a busy-waiting pool made
# training steps about 10x slower. Set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

if TYPE_CHECKING:
    from depthcurse.analyze import Analysis
    from depthcurse.suite import SuiteOptions

app = typer.Typer(
    help="Train depth-grown transformers and measure how they use their depth.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def root() -> None:
    """Train depth-grown transformers and measure how they use their depth."""


@app.command()
def presets() -> None:
    """List the model presets with their shapes and parameter counts."""
    from depthcurse.config import PRESETS

    typer.echo(f"{'preset':<14}{'layers':>7}{'d_model':>8}{'heads':>6}{'kv':>4}{'vocab':>8}{'params':>15}")
    for name, cfg in PRESETS.items():
        typer.echo(
            f"{name:<14}{cfg.n_layers:>7}{cfg.d_model:>8}{cfg.n_heads:>6}{cfg.n_kv_heads:>4}"
            f"{cfg.vocab_size:>8}{cfg.param_count():>15,}"
        )


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Run folder for run.json, metrics.jsonl and checkpoints.")],
    preset: Annotated[str | None, typer.Option(help="Model preset; its layer count is the target depth.")] = None,
    growth: Annotated[str | None, typer.Option(help="Growth method: none, stack, midas or lidas.")] = None,
    ln_scaling: Annotated[
        bool | None,
        typer.Option("--ln-scaling/--no-ln-scaling", help="LayerNorm Scaling: scale layer l's norms by 1/sqrt(l)."),
    ] = None,
    block_size: Annotated[
        int | None, typer.Option(help="Layers added per growth event (tiny: 2, others: 4).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the initialisation and the data order.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps of the whole run, all stages.")] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Prepared data folder (train.bin, val.bin).")
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="TOML recipe: TrainConfig keys, model overrides in a model table.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override KEY=VALUE (TOML value), e.g. --set lr=1e-3 --set model.d_model=64."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
) -> None:
    """Train a model, growing it in depth by the chosen method (see depthcurse.train)."""
    from depthcurse.hardware import physical_cores

    # Size the OpenMP pool before torch is imported and starts it.
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, physical_cores() // local)))

    from depthcurse.checkpoint import CheckpointError
    from depthcurse.config import ConfigError
    from depthcurse.growth import GrowthError
    from depthcurse.suite import progress_bars
    from depthcurse.train import TrainError, build_config, saved_config
    from depthcurse.train import train as run_training

    options = {
        "preset": preset, "growth": growth, "block_size": block_size, "seed": seed,
        "max_steps": max_steps, "data_dir": None if data is None else str(data),
    }
    if ln_scaling is not None:
        options["model.ln_scaling"] = ln_scaling
    try:
        base = saved_config(out) if resume else None
        cfg = build_config(base, recipe, set_, options)
        cfg.progress = cfg.progress and progress_bars()
        result = run_training(cfg, out, resume=resume)
    except (ConfigError, GrowthError, TrainError, CheckpointError, OSError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        import torch.distributed

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if result.val_loss is not None and os.environ.get("RANK", "0") == "0":
        typer.echo(f"done: step {result.step}, val_loss {result.val_loss:.4f}, run in {out}")


@app.command()
def reproduce(
    recipe: Annotated[
        Path, typer.Option(help="Study recipe (TOML) naming variants, seeds and analysis options.")
    ] = Path("analyses/tiny.toml"),
    out: Annotated[
        Path, typer.Option("--out", help="Results folder: runs/, cache/, tables/, figures/, report.")
    ] = Path("results/tiny"),
    seeds: Annotated[
        int | None, typer.Option(help="Use this many seeds per variant instead of the recipe's list.")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    figures: Annotated[
        bool, typer.Option("--figures/--no-figures", help="Draw the figures (PDF and PNG).")
    ] = True,
) -> None:
    """Run the whole study: train every variant and seed, analyse them and the public model, report."""
    from depthcurse.hardware import physical_cores

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, physical_cores())))

    from depthcurse.checkpoint import CheckpointError
    from depthcurse.config import ConfigError
    from depthcurse.sources import LoadError
    from depthcurse.study import reproduce as run_study
    from depthcurse.train import TrainError

    try:
        result = run_study(
            recipe, out, seeds=seeds, progress=progress, figures=figures, echo=typer.echo
        )
    except (ConfigError, TrainError, CheckpointError, LoadError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        import torch.distributed

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if result is None:  # a torchrun rank other than 0: it only trained
        return
    total = sum(result.timings.values())
    typer.echo(f"done in {total / 60:.1f} min: {result.report}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()


@app.command("evaluate")
def evaluate_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="Checkpoint folder, or a run folder (its latest checkpoint).")
    ],
    tasks: Annotated[
        str, typer.Option(help="Comma-separated tasks: induction, variable_assignment, arithmetic.")
    ] = "induction,variable_assignment,arithmetic",
    n_per_level: Annotated[int, typer.Option(help="Instances per task, form and level.")] = 100,
    shots: Annotated[
        int | None,
        typer.Option(
            help="Solved examples before each query (default: 3, or per task the most that fit "
            "the model's context, with a printed note).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated instances.")] = 0,
    data: Annotated[
        Path | None, typer.Option("--data", help="Prepared data folder: also report NLL on its val.bin.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the accuracy table to this CSV file.")] = None,
) -> None:
    """Score a checkpoint on generated reasoning primitives (and held-out NLL with --data)."""
    from depthcurse.checkpoint import CheckpointError, load_checkpoint
    from depthcurse.data import load_tokenizer, open_tokens
    from depthcurse.evals import PrimitiveError, TokenizerError, evaluate, heldout_nll
    from depthcurse.sources import CHECKPOINTS_DIR, LoadError, select_checkpoint

    if not checkpoint.exists():
        raise typer.BadParameter(f"{checkpoint} does not exist; pass a checkpoint or run folder")
    if (checkpoint / CHECKPOINTS_DIR).is_dir() and not (checkpoint / "tokenizer.json").is_file():
        try:
            checkpoint = select_checkpoint(checkpoint)  # a run folder: its latest checkpoint
        except LoadError as err:
            raise typer.BadParameter(str(err)) from err
        typer.echo(f"evaluating {checkpoint}")
    tokenizer_file = checkpoint / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise typer.BadParameter(f"{tokenizer_file} not found; save the checkpoint with its tokenizer")
    try:
        model, _ = load_checkpoint(checkpoint)
        tokenizer = load_tokenizer(tokenizer_file)
        table = evaluate(
            model.eval(), tokenizer, [t.strip() for t in tasks.split(",")],
            n_per_level=n_per_level, seed=seed, shots=shots,
        )
    except (CheckpointError, PrimitiveError, TokenizerError, ValueError) as err:
        raise typer.BadParameter(str(err)) from err
    for note in table.attrs.get("notes", []):
        typer.echo(f"note: {note}")
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if out is not None:
        table.to_csv(out, index=False)
    if data is not None:
        result = heldout_nll(model, open_tokens(data / "val.bin"), seq_len=model.cfg.max_seq_len)
        typer.echo(
            f"held-out NLL {result.nll:.4f} [{result.nll_low:.4f}, {result.nll_high:.4f}] nats/token, "
            f"perplexity {result.perplexity:.2f}, {result.n_tokens} tokens in {result.n_sequences} sequences"
        )


def _suite_options(
    n_prompts: int, prompt_tokens: int, block_size: int | None, settings: list[str] | None
) -> SuiteOptions:
    """Build SuiteOptions from the command-line options and KEY=VALUE (TOML value) overrides."""
    import tomllib

    from depthcurse.config import ConfigError
    from depthcurse.suite import SuiteOptions

    values: dict = {"n_prompts": n_prompts, "prompt_tokens": prompt_tokens, "block_size": block_size}
    for setting in settings or []:
        key, sep, raw = setting.partition("=")
        if not sep:
            raise typer.BadParameter(f"--option {setting!r} is not KEY=VALUE, e.g. --option tuned_lens_steps=20")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw
    try:
        return SuiteOptions.from_dict(values)
    except (ConfigError, TypeError) as err:
        raise typer.BadParameter(str(err)) from err


def _only(only: str | None) -> tuple[str, ...] | None:
    from depthcurse.suite import check_analyses

    if only is None:
        return None
    try:
        return check_analyses([name.strip() for name in only.split(",") if name.strip()])
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--only") from err


OnlyOption = Annotated[
    str | None,
    typer.Option("--only", help="Comma-separated analyses to run, e.g. residual_norms,logit_lens (default: all)."),
]
NPromptsOption = Annotated[int, typer.Option("--n-prompts", help="Validation prompts the analyses run on.")]
PromptTokensOption = Annotated[
    int, typer.Option("--prompt-tokens", help="Tokens per prompt (capped at the model's context).")
]
CacheOption = Annotated[
    Path | None, typer.Option("--cache", help="Result cache folder (default: OUT/cache).")
]
BlockSizeOption = Annotated[
    int | None,
    typer.Option("--block-size", help="Block size of block perturbations (default: the growth history's, else 2)."),
]
SettingOption = Annotated[
    list[str] | None,
    typer.Option("--option", help="Suite option KEY=VALUE, e.g. --option tuned_lens_steps=20 (see SuiteOptions)."),
]
FiguresOption = Annotated[
    bool, typer.Option("--figures/--no-figures", help="Draw the figures after the tables.")
]
DtypeOption = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="Dtype the model runs in: float32, or bfloat16 (about 2x faster on CPUs with "
        "AVX-512 BF16, and results differ by rounding). Metrics are float32 either way.",
    ),
]


def _fail(err: Exception) -> NoReturn:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code=2)


def _run_suite_command(
    command: str,
    run: Callable[..., Analysis],
    sources: tuple[str, ...],
    out: Path,
    *,
    only: str | None,
    n_prompts: int,
    prompt_tokens: int,
    cache: Path | None,
    block_size: int | None,
    option: list[str] | None,
    figures: bool,
    dtype: str,
) -> Analysis:
    """Check the suite options that `analyze` and `compare` share, then call `run`.

    Progress goes to stderr as ``[COMMAND] step``. A source that cannot be loaded, or an
    invalid option value found while running, ends the command with exit code 2.
    """
    from depthcurse.analyze import MODEL_DTYPES
    from depthcurse.sources import LoadError

    names = _only(only)
    options = _suite_options(n_prompts, prompt_tokens, block_size, option)
    if dtype not in MODEL_DTYPES:
        raise typer.BadParameter(
            f"{dtype!r} is not supported; choose one of {', '.join(MODEL_DTYPES)}",
            param_hint="--dtype",
        )
    try:
        return run(
            *sources, out, only=names, options=options, cache_dir=cache, figures=figures,
            progress=lambda step: typer.echo(f"[{command}] {step}", err=True), dtype=dtype,
        )
    except (LoadError, FileNotFoundError, ValueError) as err:
        _fail(err)


@app.command("analyze")
def analyze_command(
    source: Annotated[
        str, typer.Argument(help="Checkpoint or run folder, Hugging Face folder, .gguf file or smollm2-135m.")
    ],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: results/analyze-NAME).")] = None,
    only: OnlyOption = None,
    n_prompts: NPromptsOption = 20,
    prompt_tokens: PromptTokensOption = 128,
    cache: CacheOption = None,
    block_size: BlockSizeOption = None,
    option: SettingOption = None,
    figures: FiguresOption = True,
    dtype: DtypeOption = "float32",
) -> None:
    """Run the analysis suite on one model; write tables, figures and a result cache."""
    from depthcurse.analyze import analyze

    out = out or Path("results") / f"analyze-{Path(str(source)).name}"
    result = _run_suite_command(
        "analyze", analyze, (source,), out, only=only, n_prompts=n_prompts,
        prompt_tokens=prompt_tokens, cache=cache, block_size=block_size, option=option,
        figures=figures, dtype=dtype,
    )
    typer.echo(f"wrote {len(result.tables)} tables and {len(result.figures)} figure files to {out}")


@app.command("compare")
def compare_command(
    source_a: Annotated[str, typer.Argument(help="Model A: any source `depthcurse analyze` accepts.")],
    source_b: Annotated[str, typer.Argument(help="Model B: any source `depthcurse analyze` accepts.")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: results/compare-A-B).")] = None,
    only: OnlyOption = None,
    n_prompts: NPromptsOption = 20,
    prompt_tokens: PromptTokensOption = 128,
    cache: CacheOption = None,
    block_size: BlockSizeOption = None,
    option: SettingOption = None,
    figures: FiguresOption = True,
    dtype: DtypeOption = "float32",
) -> None:
    """Run the suite on two models; write side-by-side tables, overlaid figures and report.md."""
    from depthcurse.analyze import compare

    out = out or Path("results") / f"compare-{Path(source_a).name}-{Path(source_b).name}"
    result = _run_suite_command(
        "compare", compare, (source_a, source_b), out, only=only, n_prompts=n_prompts,
        prompt_tokens=prompt_tokens, cache=cache, block_size=block_size, option=option,
        figures=figures, dtype=dtype,
    )
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote {len(result.tables)} tables, {len(result.figures)} figure files and {result.report}")
