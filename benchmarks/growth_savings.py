"""Wall-clock of grown runs against the full-depth baseline at equal steps, on CPU.

Each method trains the same model for the same number of steps on random
tokens; the grown runs start at one block and follow PROP-1. The table
compares the measured time of the training steps, relative to the baseline,
with the FLOP fraction that `depthcurse.growth.compute_fraction` predicts,
and shows what the growth events themselves cost. Runs alternate between
methods, and each method's time is the median over the repeats, so a load
change on a shared machine hits all of them.

Step times come from metrics.jsonl (log_interval=1: one record per step),
so process start-up, evaluation and checkpoint writes are not counted; the
process wall-clock is shown beside them.

    python benchmarks/growth_savings.py --steps 60 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_throughput import env, write_random_tokens  # noqa: E402
from depthcurse.config import preset  # noqa: E402
from depthcurse.growth import compute_fraction, stage_depths, stage_lengths  # noqa: E402


def run(method: str, data: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """Train one method; return step seconds, growth seconds and process seconds."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "depthcurse", "train", "--preset", "tiny", "--growth", method,
        "--data", str(data), "--max-steps", str(args.steps), "--out", str(out),
        "--set", "log_interval=1", "--set", f"eval_interval={args.steps}", "--set", "eval_batches=1",
        "--set", f"checkpoint_interval={args.steps}", "--set", "progress=false",
        "--set", f"batch_size={args.batch_size}", "--set", f"seq_len={args.seq_len}",
        "--set", f"threads={args.threads}",
    ]
    started = time.perf_counter()
    subprocess.run(command, env=env(args.threads), check=True, capture_output=True)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tokens_per_step = args.batch_size * args.seq_len
    steps = sum(tokens_per_step / r["tokens_per_s"] for r in records if r["kind"] == "train")
    growth = sum(r["seconds"] for r in records if r["kind"] == "growth")
    return {"steps": steps, "growth": growth, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per method")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--methods", default="midas,lidas", help="grown methods, comma-separated")
    args = parser.parse_args()

    cfg = preset("tiny")
    methods = ["none", *args.methods.split(",")]
    depths = stage_depths(cfg.n_layers, 2)
    predicted = compute_fraction(cfg, depths, stage_lengths(args.steps, len(depths)), args.seq_len)
    scratch = Path(tempfile.mkdtemp(prefix="dc-growth-"))
    results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    try:
        write_random_tokens(scratch / "data", cfg.vocab_size, 200_000)
        for _ in range(args.repeats):
            for method in methods:
                results[method].append(run(method, scratch / "data", scratch / method, args))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    import torch

    from depthcurse.hardware import device_description

    def median(method: str, key: str) -> float:
        return statistics.median(r[key] for r in results[method])

    base = median("none", "steps")
    print(f"machine: {device_description(torch.device('cpu'))}, {args.threads} thread(s), "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"tiny preset (8 layers, block 2, PROP-1 over {len(depths)} stages), seq {args.seq_len}, "
          f"batch {args.batch_size}, {args.steps} steps, median of {args.repeats} runs")
    print(f"{'method':<8}{'predicted':>10}{'step time':>11}{'measured':>10}{'off by':>8}"
          f"{'growth':>9}{'growth %':>10}{'process':>9}")
    for method in methods:
        fraction = 1.0 if method == "none" else predicted
        steps = median(method, "steps")
        ratio = steps / base
        growth = median(method, "growth")
        print(f"{method:<8}{fraction:>10.3f}{steps:>10.2f}s{ratio:>10.3f}"
              f"{100 * (ratio / fraction - 1):>7.1f}%{growth:>8.3f}s{100 * growth / steps:>9.2f}%"
              f"{median(method, 'wall'):>8.1f}s")


if __name__ == "__main__":
    main()
