"""Quick start without Jupyter: train a tiny grown model, analyse it and SmolLM2-135M, draw figures.

Run from the repository root (a few minutes on a laptop CPU):

    python examples/quickstart.py [--checkpoint PATH] [--out quickstart-output]

Without --checkpoint it prepares the default corpus (Shakespeare and the King
James Bible) with a 512-token tokenizer and trains a 4-layer MIDAS model for
60 steps, growing it from 2 to 4 layers. Three residual-stream analyses (norms,
relative contributions, logit lens) then run on that model and on the bundled
public model `smollm2-135m`, which is a Q4_1 GGUF file dequantized to float32
on load, so its results are those of the quantized model. The figures put both
models on relative depth l / L.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

import depthcurse  # noqa: E402
from depthcurse.figures import make_figures  # noqa: E402
from depthcurse.suite import SuiteOptions, run_suite  # noqa: E402

ANALYSES = ["residual_norms", "contributions", "logit_lens"]


def train_tiny(out: Path) -> Path:
    """Train a 4-layer model grown by MIDAS for 60 steps on the default corpus; return its run folder."""
    from depthcurse.data import prepare_data
    from depthcurse.train import TrainConfig, train

    data = prepare_data(out / "data", vocab_size=512)
    config = TrainConfig(
        preset="tiny",
        model={"vocab_size": 512, "d_model": 64, "n_layers": 4, "d_mlp": 192, "max_seq_len": 64},
        growth="midas", block_size=2, data_dir=str(data.out_dir), batch_size=8, max_steps=60,
        warmup_steps=10, eval_interval=30, eval_batches=4, log_interval=20, progress=False,
    )
    result = train(config, out / "run")
    print(f"trained {result.step} steps, held-out loss {result.val_loss:.3f}")
    return result.out


def depth_halves(contributions: pd.DataFrame) -> pd.DataFrame:
    """Return each model's mean relative contribution ‖a+m‖/‖h‖ in the first and second half of its layers."""
    rows = contributions.query("metric == 'layer' and statistic == 'mean'").copy()
    last = rows.groupby("model")["layer"].transform("max")
    rows["half"] = (rows["layer"] / last).map(lambda depth: "first" if depth < 0.5 else "second")
    return rows.pivot_table(index="model", columns="half", values="value").round(3)


def main(out: Path, checkpoint: Path | None = None) -> list[Path]:
    """Analyse the checkpoint (trained here when None) and smollm2-135m; return the figure files."""
    out.mkdir(parents=True, exist_ok=True)
    source = checkpoint if checkpoint is not None else train_tiny(out)
    options = SuiteOptions(n_prompts=4, prompt_tokens=48, batch_size=4)

    own_label = "tiny-midas" if checkpoint is None else Path(checkpoint).name
    tables = []
    for name, label in ((source, own_label), ("smollm2-135m", "smollm2-135m")):
        model = depthcurse.load(name)
        print(model.depthcurse_info.describe())
        tables.append(run_suite(model, only=ANALYSES, options=options, label=label))
    both = {name: pd.concat([t[name] for t in tables], ignore_index=True) for name in ANALYSES}
    print("mean relative contribution ||a+m|| / ||h|| over the first and second half of the layers:")
    print(depth_halves(both["contributions"]))
    return make_figures(both, out / "figures")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="depthcurse quick start")
    parser.add_argument("--checkpoint", type=Path, help="analyse this checkpoint or run instead of training one")
    parser.add_argument("--out", type=Path, default=Path("quickstart-output"), help="output folder")
    args = parser.parse_args()
    for path in main(args.out, args.checkpoint):
        print(path)
