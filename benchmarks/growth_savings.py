"""Time of grown runs against the full-depth baseline at equal steps, on CPU.

Each method trains the same model for the same number of steps on random
tokens; the grown runs start at one block and follow PROP-1. The table
compares the time of the training steps, relative to the baseline, with the
FLOP fraction that `depthcurse.growth.compute_fraction` predicts, and shows
what the growth events themselves cost. Runs alternate between methods, in
reverse order on every second repeat, and each method's time is the median
over the repeats, so a load change on a shared machine hits all of them.

Step times come from metrics.jsonl (log_interval=1: one record per step), so
process start-up, evaluation and checkpoint writes are not counted. "CPU" is
the trainer process's CPU time per step. Other jobs on a shared machine change
it much less than the wall-clock time, which is shown beside it.

The last line fits the grown runs' median CPU time per step against depth,
t = fixed + per_layer * depth, and sets the fitted depth-independent cost
(embedding, unembedding, loss, the embedding's optimizer update) in units of
one layer beside the same ratio under `flops_per_token`. Where the two agree,
the FLOP fraction predicts the time fraction.

    python benchmarks/growth_savings.py --steps 60 --repeats 3
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
from depthcurse.growth import (  # noqa: E402
    compute_fraction,
    flops_per_token,
    stage_depths,
    stage_lengths,
)


def run(method: str, data: Path, out: Path, args: argparse.Namespace) -> dict[str, object]:
    """Train one method and return its wall and CPU step seconds, growth and process seconds."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "depthcurse", "train", "--preset", "tiny", "--growth", method,
        "--data", str(data), "--max-steps", str(args.steps), "--out", str(out),
        "--set", "log_interval=1", "--set", f"eval_interval={args.steps}", "--set", "eval_batches=1",
        "--set", f"checkpoint_interval={args.steps}", "--set", "progress=false",
        "--set", f"batch_size={args.batch_size}", "--set", f"seq_len={args.seq_len}",
        "--set", f"threads={args.threads}",
    ]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    subprocess.run(command, env=env(args.threads), check=True, capture_output=True)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    tokens_per_step = args.batch_size * args.seq_len
    cpu_by_depth: dict[int, list[float]] = {}
    for r in steps:
        cpu_by_depth.setdefault(r["depth"], []).append(r["step_cpu_s"])
    return {
        "steps": sum(tokens_per_step / r["tokens_per_s"] for r in steps),
        "cpu": sum(r["step_cpu_s"] for r in steps),
        "growth": sum(r["seconds"] for r in records if r["kind"] == "growth"),
        "wall": wall,
        "load": load,
        "cpu_by_depth": {d: statistics.median(v) for d, v in cpu_by_depth.items()},
    }


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Return (intercept, slope) of the least-squares line through the points."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    return mean_y - slope * mean_x, slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per method")
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
    results: dict[str, list[dict[str, object]]] = {m: [] for m in methods}
    try:
        write_random_tokens(scratch / "data", cfg.vocab_size, 200_000)
        for repeat in range(args.repeats):
            order = methods if repeat % 2 == 0 else methods[::-1]
            for method in order:
                results[method].append(run(method, scratch / "data", scratch / method, args))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    import torch

    from depthcurse.hardware import device_description

    def median(method: str, key: str) -> float:
        return statistics.median(r[key] for r in results[method])

    base_wall, base_cpu = median("none", "steps"), median("none", "cpu")
    loads = [r["load"] for runs in results.values() for r in runs]
    print(f"machine: {device_description(torch.device('cpu'))}, {args.threads} thread(s), "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"tiny preset (8 layers, block 2, PROP-1 over {len(depths)} stages), seq {args.seq_len}, "
          f"batch {args.batch_size}, {args.steps} steps, median of {args.repeats} runs")
    print(f"{'method':<8}{'predicted':>10}{'CPU':>9}{'measured':>10}{'off by':>8}"
          f"{'wall':>9}{'measured':>10}{'off by':>8}{'growth':>9}{'growth %':>10}{'process':>9}")
    for method in methods:
        fraction = 1.0 if method == "none" else predicted
        cpu, wall = median(method, "cpu"), median(method, "steps")
        cpu_ratio, wall_ratio = cpu / base_cpu, wall / base_wall
        growth = median(method, "growth")
        print(f"{method:<8}{fraction:>10.3f}{cpu:>8.2f}s{cpu_ratio:>10.3f}"
              f"{100 * (cpu_ratio / fraction - 1):>7.1f}%{wall:>8.2f}s{wall_ratio:>10.3f}"
              f"{100 * (wall_ratio / fraction - 1):>7.1f}%{growth:>8.3f}s{100 * growth / wall:>9.2f}%"
              f"{median(method, 'wall'):>8.1f}s")
    grown = [r for m in methods if m != "none" for r in results[m]]
    points = [(d, t) for r in grown for d, t in r["cpu_by_depth"].items()]
    if len({d for d, _ in points}) > 1:
        fixed, per_layer = fit_line([d for d, _ in points], [t for _, t in points])
        flops_layer = flops_per_token(cfg, 2, args.seq_len) - flops_per_token(cfg, 1, args.seq_len)
        flops_fixed = flops_per_token(cfg, 1, args.seq_len) - flops_layer
        print(f"CPU s/step fit over depth: {1e3 * fixed:.1f} ms + {1e3 * per_layer:.1f} ms x depth; "
              f"depth-independent cost = {fixed / per_layer:.2f} layers measured, "
              f"{flops_fixed / flops_layer:.2f} layers in FLOPs")
    print(f"load average (1 min) before each run: min {min(loads):.1f}, "
          f"median {statistics.median(loads):.1f}, max {max(loads):.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
