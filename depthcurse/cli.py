"""The `depthcurse` command line: train, analyze, compare, reproduce."""

from __future__ import annotations

import os

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
