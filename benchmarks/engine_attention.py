"""Time the intervention engine with eager attention against fused attention (sdpa).

The bridge's attention wrapper computes eager attention, and `LayerStack` calls
the transformers module inside it with `scaled_dot_product_attention` instead
(`depthcurse.analyses.engine.ENGINE_ATTENTION`). This script runs the same
analyses on `smollm2-135m` with both settings, alternating them for `--rounds`
rounds in one process, so machine load hits both about equally:

- one layer forward of 16 stacked sequences (the skip engine's `max_rows`);
- current-mode skip effects of part "layer" on the prompts;
- perturbations (block size 2, as the suite uses for smollm2).

It prints the seconds of each run and the eager / sdpa ratio of the medians, and
checks that both settings give the same results to a relative 1e-3. All runs use
the suite's reused heap (`depthcurse.hardware.reused_heap`).

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/engine_attention.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help="validation prompts")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per prompt")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import depthcurse
    from depthcurse.analyses import engine
    from depthcurse.analyses.perturbations import perturbations
    from depthcurse.analyses.skip_effects import skip_effect_arrays
    from depthcurse.hardware import reused_heap
    from depthcurse.suite import SuiteOptions, suite_prompts

    model = depthcurse.load("smollm2-135m")
    options = SuiteOptions(n_prompts=args.prompts, prompt_tokens=args.tokens)
    prompts = suite_prompts(model, options)
    tokens, mask = next((ids, m) for _, ids, m in prompts.batches(args.prompts))

    def layer_forward() -> None:
        stack = engine.LayerStack(model, tokens, mask)
        rows = stack.embeddings.repeat(max(1, 16 // stack.batch), 1, 1)
        with torch.no_grad():
            for _ in range(5):
                stack.layer(5, rows)

    def skips() -> np.ndarray:
        arrays = skip_effect_arrays(model, prompts, part="layer", progress=False)
        return np.concatenate([arrays.effect.ravel(), arrays.output.ravel()])

    def perturbs() -> np.ndarray:
        table = perturbations(model, prompts, block_size=2, progress=False)
        return table["value"].to_numpy(dtype=float)

    tasks = {"5 layer forwards, 16 rows": layer_forward, "skip effects (layer)": skips,
             "perturbations": perturbs}
    seconds: dict[tuple[str, str], list[float]] = {}
    results: dict[tuple[str, str], object] = {}
    with reused_heap():
        for _ in range(args.rounds):
            for setting in ("eager", "sdpa"):
                engine.ENGINE_ATTENTION = setting
                for name, task in tasks.items():
                    start = time.perf_counter()
                    results[name, setting] = task()
                    seconds.setdefault((name, setting), []).append(time.perf_counter() - start)
                    print(f"{name}, {setting}: {seconds[name, setting][-1]:.1f} s", flush=True)
        engine.ENGINE_ATTENTION = "sdpa"

    print(f"\nsmollm2-135m, {args.prompts} prompts x {args.tokens} tokens, "
          f"{args.threads} threads, torch {torch.__version__}, "
          f"load average at the end {', '.join(f'{v:.1f}' for v in os.getloadavg())}\n")
    print("| work | eager s (median) | sdpa s (median) | eager / sdpa |")
    print("|---|---:|---:|---:|")
    for name in tasks:
        eager = statistics.median(seconds[name, "eager"])
        fused = statistics.median(seconds[name, "sdpa"])
        print(f"| {name} | {eager:.1f} | {fused:.1f} | {eager / fused:.2f} |")
    for name in ("skip effects (layer)", "perturbations"):
        eager, fused = results[name, "eager"], results[name, "sdpa"]
        difference = np.nanmax(np.abs(eager - fused) / np.maximum(np.abs(eager), 1e-3))
        print(f"\n{name}: largest relative difference between the settings {difference:.2e}")
        assert difference < 1e-3, f"{name} differ by {difference} (relative) between eager and sdpa"


if __name__ == "__main__":
    main()
