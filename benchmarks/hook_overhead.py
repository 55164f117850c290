"""Hook overhead and load memory of `depthcurse.load("smollm2-135m")`.

Measures, on the same machine in the same run:

1. forward time of the TransformerBridge with a residual-only cache
   (`run_with_cache(names_filter=...)` on every `blocks.{l}.hook_resid_*`)
   against the transformers `LlamaForCausalLM` it wraps, loaded separately
   from the same GGUF file with the same eager attention, and against
   transformers' default SDPA attention for context;
2. peak resident memory (`ru_maxrss`) of a fresh process that runs
   `depthcurse.load("smollm2-135m")`, against one that loads the bare
   transformers model from the GGUF file.

Goals: hooked / raw eager <= 1.05 at batch 8 x 256 tokens; peak RSS of the
load <= 2 GB. Timed forwards alternate between the models, so load from
other processes on a shared machine hits all of them alike. The table
reports the median wall-clock time and process CPU time of the repeats.

    PYTHONPATH=. python benchmarks/hook_overhead.py [--batch 8] [--seq 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

LOAD_BRIDGE = """
import resource, depthcurse
depthcurse.load("smollm2-135m")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

LOAD_RAW = """
import resource
from transformers import LlamaForCausalLM
from depthcurse.sources import bundled_path
path = bundled_path("smollm2-135m")
LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, attn_implementation="eager")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(code: str) -> float:
    """Run `code` in a fresh interpreter and return its peak resident memory in MiB (Linux units)."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def time_call(fn) -> tuple[float, float]:
    """Return the wall-clock and process CPU seconds of one call of `fn`."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="sequences per forward")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per model")
    args = parser.parse_args()

    # Measured first: on Linux a child's ru_maxrss starts from the parent's
    # RSS at fork time, so the parent must not yet hold any model.
    rss_bridge = peak_rss_mb(LOAD_BRIDGE)
    rss_raw = peak_rss_mb(LOAD_RAW)

    from transformers import LlamaForCausalLM

    import depthcurse
    from depthcurse.sources import bundled_path

    bridge = depthcurse.load("smollm2-135m")
    path = bundled_path("smollm2-135m")
    raw = {
        attention: LlamaForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation=attention
        ).eval()
        for attention in ("eager", "sdpa")
    }
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, bridge.cfg.d_vocab, (args.batch, args.seq), generator=generator)
    resid_names = [
        f"blocks.{layer}.hook_resid_{kind}"
        for layer in range(bridge.cfg.n_layers)
        for kind in ("pre", "mid", "post")
    ]

    runs = {
        "transformers forward (eager attention)": lambda: raw["eager"](tokens),
        "bridge run_with_cache, resid only": lambda: bridge.run_with_cache(tokens, names_filter=resid_names),
        "bridge forward, no hooks": lambda: bridge(tokens),
        "transformers forward (sdpa attention)": lambda: raw["sdpa"](tokens),
    }
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up: first-call allocations and kernel selection
        for _ in range(args.repeats):
            for name, fn in runs.items():
                wall_s, cpu_s = time_call(fn)
                wall[name].append(wall_s)
                cpu[name].append(cpu_s)

    # Process CPU time is the steadier measure on a shared machine: time spent
    # waiting for a core counts in wall-clock time but not in CPU time.
    peer = "transformers forward (eager attention)"
    wall_base, cpu_base = statistics.median(wall[peer]), statistics.median(cpu[peer])
    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.1f}")
    print(f"model: {bridge.depthcurse_info.describe()}")
    print(f"input: batch {args.batch} x {args.seq} tokens, float32, median of {args.repeats} repeats\n")
    header = f"| {'forward':<40} | {'wall s':>7} | {'vs eager':>8} | {'CPU s':>7} | {'vs eager':>8} |"
    print(header)
    print("|" + "|".join("-" * (len(cell) + 2) for cell in header.strip("| ").split(" | ")) + "|")
    for name in runs:
        wall_s, cpu_s = statistics.median(wall[name]), statistics.median(cpu[name])
        print(
            f"| {name:<40} | {wall_s:7.2f} | {wall_s / wall_base:7.3f}x "
            f"| {cpu_s:7.2f} | {cpu_s / cpu_base:7.3f}x |"
        )
    print()
    print(f"| {'load (fresh process)':<40} | {'peak RSS MiB':>12} |")
    print(f"|{'-' * 42}|{'-' * 14}|")
    print(f"| {'depthcurse.load(smollm2-135m)':<40} | {rss_bridge:12.0f} |")
    print(f"| {'transformers LlamaForCausalLM from GGUF':<40} | {rss_raw:12.0f} |")


if __name__ == "__main__":
    main()
