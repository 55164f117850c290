"""The `depthcurse` command line: train, analyze, compare, reproduce."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

# Passive OpenMP threads: on a shared 2-core machine a busy-waiting pool made
# training steps about 10x slower. Set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
