"""Training throughput (tokens/s, MFU) of `depthcurse train`, against nanoGPT on CPU.

CPU mode (default): the `tiny` preset (8 layers, d_model 128, seq 256,
batch 16) trains on random tokens. nanoGPT's `train.py` trains its GPT of the
same depth, width, heads, sequence and batch on the same tokens. The two run
in alternating subprocesses with the same thread count, and both report
per-step times. The table shows median tokens/s, their ratio, and achieved
FLOP/s under each model's own FLOP count, because the two models differ
slightly (SwiGLU and grouped-query attention here, GELU and full attention there).

nanoGPT is not a dependency: pass the folder of a checkout of
https://github.com/karpathy/nanoGPT with --nanogpt. Its `train.py`,
`model.py` and `configurator.py` are copied into a temporary folder and run
there, unmodified. Our trainer sets glibc's malloc to keep freed memory on
CPU (`depthcurse.hardware.retain_freed_memory`). --peer-malloc adds a third
row, nanoGPT run with the same malloc settings through GLIBC_TUNABLES, which
shows how much of the ratio comes from that setting alone. The table ends
with the 1-minute load average sampled before each run, because the machine
may be shared.

On a shared machine the wall-clock rates swing with other jobs. --cpu-time
also runs every trainer for CPU_SHORT_STEPS steps and reports CPU seconds per
step: the difference of the child processes' CPU time (rusage) between the
long and the short run, divided by the difference in steps. Start-up, the
evaluation and the checkpoint cancel out, and other jobs change CPU time much
less than wall-clock time.

GPU mode (--gpu): `smollm-360m` at seq 2048 in bf16 with torch.compile,
MIDAS growth from 28 to 32 layers half-way, on random tokens. Prints one
table: tokens/s and MFU per stage (compile steps excluded) and the growth
event's cost.

    python benchmarks/train_throughput.py --nanogpt /path/to/nanoGPT --steps 30
    python benchmarks/train_throughput.py --gpu --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from depthcurse.config import preset  # noqa: E402
from depthcurse.data import write_tokens  # noqa: E402
from depthcurse.growth import flops_per_token  # noqa: E402
from depthcurse.hardware import cpu_peak_flops, device_description  # noqa: E402

WARMUP_STEPS = 5  # steps dropped from each run's timings: allocator and cache warm-up
CPU_SHORT_STEPS = 5  # steps of the short run that --cpu-time subtracts


def children_cpu_seconds() -> float:
    """Return the user + system CPU seconds of all finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_random_tokens(folder: Path, vocab: int, count: int, seed: int = 0) -> np.ndarray:
    """Write train.bin/val.bin in our format and return the token array."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, count)
    write_tokens(folder / "train.bin", tokens, vocab)
    write_tokens(folder / "val.bin", tokens[: count // 10], vocab)
    return tokens


# glibc tunables equal to what retain_freed_memory sets with mallopt: no mmap,
# and a trim threshold (1 TiB) that is never reached.
RETAIN_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776"


def env(threads: int, retain_memory: bool = False) -> dict[str, str]:
    values = dict(os.environ)
    values.update(OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
    if retain_memory:
        values["GLIBC_TUNABLES"] = RETAIN_TUNABLES
    return values


def run_ours(data: Path, out: Path, steps: int, threads: int) -> list[float]:
    """Train tiny for `steps` steps; return per-step tokens/s after warm-up."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "depthcurse", "train", "--preset", "tiny", "--growth", "none",
        "--data", str(data), "--max-steps", str(steps), "--out", str(out),
        "--set", "log_interval=1", "--set", f"eval_interval={steps}", "--set", "eval_batches=1",
        "--set", f"checkpoint_interval={steps}", "--set", "progress=false",
        "--set", "batch_size=16", "--set", "seq_len=256", "--set", f"threads={threads}",
    ]
    subprocess.run(command, env=env(threads), check=True, capture_output=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if r["kind"] == "train"]
    return speeds[WARMUP_STEPS:]


def run_nanogpt(workdir: Path, steps: int, threads: int, cfg, retain_memory: bool = False) -> list[float]:
    """Train nanoGPT's GPT of the tiny shape; return per-step tokens/s after warm-up."""
    command = [
        sys.executable, "train.py", "--dataset=dcbench", f"--n_layer={cfg.n_layers}",
        f"--n_head={cfg.n_heads}", f"--n_embd={cfg.d_model}", "--block_size=256",
        "--batch_size=16", "--gradient_accumulation_steps=1", "--device=cpu", "--compile=False",
        "--dtype=float32", f"--max_iters={steps - 1}", f"--eval_interval={10 * steps}",
        "--eval_iters=1", "--log_interval=1", "--dropout=0.0", "--bias=False",
        "--always_save_checkpoint=False", "--out_dir=out",
    ]
    done = subprocess.run(command, cwd=workdir, env=env(threads, retain_memory), check=True,
                          capture_output=True, text=True)
    times = [float(ms) for ms in re.findall(r"^iter \d+: .* time ([\d.]+)ms", done.stdout, re.M)]
    # nanoGPT's iteration 0 timer also spans its first evaluation; drop warm-up steps as for ours.
    return [16 * 256 / (ms / 1000) for ms in times[WARMUP_STEPS:]]


def nanogpt_flops_per_token(cfg, seq_len: int) -> float:
    """6 x matmul parameters + attention term, our accounting applied to nanoGPT's GPT."""
    d = cfg.d_model
    per_layer = 12 * d * d  # qkv 3d^2 + proj d^2 + MLP 2 * 4d^2, no biases
    return 6.0 * (cfg.n_layers * per_layer + cfg.vocab_size * d) + 12.0 * cfg.n_layers * seq_len * d


def cpu_benchmark(args: argparse.Namespace) -> None:
    cfg = preset("tiny")
    scratch = Path(tempfile.mkdtemp(prefix="dc-throughput-"))
    try:
        tokens = write_random_tokens(scratch / "data", cfg.vocab_size, 400_000)
        nanogpt = None
        if args.nanogpt is not None:
            nanogpt = scratch / "nanogpt"
            (nanogpt / "data" / "dcbench").mkdir(parents=True)
            for name in ("train.py", "model.py", "configurator.py"):
                shutil.copy(Path(args.nanogpt) / name, nanogpt / name)
            tokens.astype(np.uint16).tofile(nanogpt / "data" / "dcbench" / "train.bin")
            tokens[: len(tokens) // 10].astype(np.uint16).tofile(nanogpt / "data" / "dcbench" / "val.bin")
            with open(nanogpt / "data" / "dcbench" / "meta.pkl", "wb") as handle:
                pickle.dump({"vocab_size": cfg.vocab_size}, handle)
        trainers = {"ours": lambda n: run_ours(scratch / "data", scratch / "run", n, args.threads)}
        if nanogpt is not None:
            trainers["nanogpt"] = lambda n: run_nanogpt(nanogpt, n, args.threads, cfg)
            if args.peer_malloc:
                trainers["nanogpt_retain"] = lambda n: run_nanogpt(
                    nanogpt, n, args.threads, cfg, retain_memory=True
                )
        speeds: dict[str, list[float]] = {name: [] for name in trainers}
        cpu: dict[str, list[float]] = {name: [] for name in trainers}
        loads = []
        for _ in range(args.repeats):  # alternate, so load changes on a shared machine hit all
            for name, run in trainers.items():
                loads.append(os.getloadavg()[0])
                if args.cpu_time:
                    started = children_cpu_seconds()
                    run(CPU_SHORT_STEPS)
                    short = children_cpu_seconds() - started
                speeds[name] += run(args.steps)
                if args.cpu_time:
                    long = children_cpu_seconds() - started - short
                    cpu[name].append((long - short) / (args.steps - CPU_SHORT_STEPS))
        ours, theirs, theirs_retain = (speeds.get(k, []) for k in ("ours", "nanogpt", "nanogpt_retain"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    import torch

    peak = cpu_peak_flops(args.threads)
    ours_fpt = flops_per_token(cfg, cfg.n_layers, 256)
    rows = [("depthcurse train (tiny)", statistics.median(ours), ours_fpt)]
    if theirs:
        rows.append(("nanoGPT train.py", statistics.median(theirs), nanogpt_flops_per_token(cfg, 256)))
    if theirs_retain:
        rows.append(("nanoGPT, same malloc", statistics.median(theirs_retain),
                     nanogpt_flops_per_token(cfg, 256)))
    print(f"machine: {device_description(torch.device('cpu'))}, {args.threads} thread(s), "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"shape: 8 layers, d_model 128, 4 heads, seq 256, batch 16, vocab 4096, float32; "
          f"{args.repeats} x {args.steps} steps each, first {WARMUP_STEPS} dropped, medians")
    print(f"MFU peak: {peak:.3g} FLOP/s (estimate, see depthcurse.hardware.cpu_peak_flops)")
    print(f"{'trainer':<26}{'tokens/s':>10}{'GFLOP/tok':>11}{'GFLOP/s':>9}{'MFU':>8}")
    for name, speed, fpt in rows:
        print(f"{name:<26}{speed:>10,.0f}{fpt / 1e9:>11.4f}{speed * fpt / 1e9:>9.2f}"
              f"{100 * speed * fpt / peak:>7.2f}%")
    if theirs:
        print(f"ratio tokens/s ours/nanoGPT: {rows[0][1] / rows[1][1]:.2f}x; "
              f"ratio FLOP/s: {rows[0][1] * rows[0][2] / (rows[1][1] * rows[1][2]):.2f}x")
    else:
        print("nanoGPT not run: pass --nanogpt PATH to a nanoGPT checkout for the comparison")
    if theirs_retain:
        print(f"ratio tokens/s ours/nanoGPT with the same malloc settings: "
              f"{rows[0][1] / rows[2][1]:.2f}x")
    if args.cpu_time:
        print(f"CPU time per step (median of {args.repeats}, long minus short run):")
        ours_cpu = statistics.median(cpu["ours"])
        labels = {"ours": "depthcurse train (tiny)", "nanogpt": "nanoGPT train.py",
                  "nanogpt_retain": "nanoGPT, same malloc"}
        for key, values in cpu.items():
            value = statistics.median(values)
            ratio = "" if key == "ours" else f"   speed ours/this: {value / ours_cpu:.2f}x"
            print(f"  {labels[key]:<26}{1e3 * value:>8.0f} ms{ratio}")
    print(f"load average (1 min) before each run: min {min(loads):.1f}, "
          f"median {statistics.median(loads):.1f}, max {max(loads):.1f} on {os.cpu_count()} CPUs")


def gpu_benchmark(args: argparse.Namespace) -> None:
    import torch

    from depthcurse.train import TrainConfig, train

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    cfg = preset("smollm-360m")
    scratch = Path(tempfile.mkdtemp(prefix="dc-throughput-gpu-"))
    half = args.steps // 2
    train_cfg = TrainConfig(
        preset="smollm-360m", growth="midas", block_size=4, initial_depth=cfg.n_layers - 4,
        stage_steps=[half, args.steps - half], data_dir=str(scratch / "data"), seq_len=2048,
        batch_size=args.batch_size, max_steps=args.steps, warmup_steps=10,
        eval_interval=10 * args.steps, eval_batches=1, checkpoint_interval=10 * args.steps,
        log_interval=1, progress=False, dtype="bfloat16", compile="on",
    )
    try:
        write_random_tokens(scratch / "data", cfg.vocab_size, 20_000_000)
        train(train_cfg, scratch / "run")
        records = [json.loads(line) for line in (scratch / "run" / "metrics.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    steps = [r for r in records if r["kind"] == "train" and r["tokens_per_s"] is not None]
    growth = [r for r in records if r["kind"] == "growth"]
    step_time = {r["step"]: args.batch_size * 2048 / r["tokens_per_s"] for r in steps}
    print(f"machine: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"smollm-360m, seq 2048, batch {args.batch_size}, bf16 autocast, torch.compile, "
          f"MIDAS {cfg.n_layers - 4} -> {cfg.n_layers} layers at step {half}; medians per stage "
          f"without the first {WARMUP_STEPS} steps of each stage")
    print(f"{'stage':<7}{'depth':>6}{'tokens/s':>12}{'MFU':>8}")
    for stage in sorted({r["stage"] for r in steps}):
        rows = [r for r in steps if r["stage"] == stage][WARMUP_STEPS:]
        print(f"{stage:<7}{rows[0]['depth']:>6}{statistics.median(r['tokens_per_s'] for r in rows):>12,.0f}"
              f"{100 * statistics.median(r['mfu'] for r in rows):>7.1f}%")
    total = sum(step_time.values())
    for event in growth:
        print(f"growth at step {event['step']}: {event['seconds']:.3f} s "
              f"({100 * event['seconds'] / total:.2f}% of the timed training steps)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per trainer (CPU)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both trainers")
    parser.add_argument("--nanogpt", type=Path, default=None, help="folder of a nanoGPT checkout")
    parser.add_argument("--cpu-time", action="store_true",
                        help="also report CPU seconds per step from an extra short run (CPU)")
    parser.add_argument("--peer-malloc", action="store_true",
                        help="also run nanoGPT with our trainer's glibc malloc settings (CPU)")
    parser.add_argument("--gpu", action="store_true", help="smollm-360m on a CUDA device instead")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step (GPU mode)")
    args = parser.parse_args()
    if args.cpu_time and args.steps <= CPU_SHORT_STEPS:
        parser.error(f"--cpu-time needs --steps above {CPU_SHORT_STEPS}, got {args.steps}")
    if args.gpu:
        gpu_benchmark(args)
    else:
        cpu_benchmark(args)


if __name__ == "__main__":
    main()
