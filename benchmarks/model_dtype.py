"""Time smollm2-135m's decoder layers and unembedding in float32 against bfloat16 on CPU.

The analyses run a model's layers one at a time (`depthcurse.analyses.engine.LayerStack`),
so this times the pieces they are made of, for one batch of 8 validation prompts of 256
tokens: the clean run (all 30 layers and the unembedding of every position), 15 layers
applied to a mid-network residual, and the unembedding of 512 positions. float32 is the
peer. The two models alternate, and each figure is the fastest of the repeats.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/model_dtype.py
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def time_pieces(model, tokens, mask) -> tuple[float, float, float]:
    """Return seconds for the clean run, 15 layers and the unembedding of 512 positions."""
    from depthcurse.analyses.engine import LayerStack, clean_run

    with torch.no_grad():
        start = time.perf_counter()
        stack = LayerStack(model, tokens, mask)
        clean = clean_run(stack)
        clean_seconds = time.perf_counter() - start

        start = time.perf_counter()
        h = clean.resid[15]
        for index in range(15, 30):
            h = stack.layer(index, h)[2]
        layer_seconds = time.perf_counter() - start

        start = time.perf_counter()
        stack.logits(h[:, :64])
        unembed_seconds = time.perf_counter() - start
    return clean_seconds, layer_seconds, unembed_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats per dtype")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import depthcurse
    from depthcurse.suite import SuiteOptions, suite_prompts

    names = ("float32", "bfloat16")
    models = {name: depthcurse.load("smollm2-135m", dtype=getattr(torch, name)) for name in names}
    prompts = suite_prompts(models["float32"], SuiteOptions(n_prompts=8, prompt_tokens=256))
    ((_, tokens, mask),) = prompts.batches(8)
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            times[name].append(time_pieces(models[name], tokens, mask))

    best = {name: [min(run[i] for run in times[name]) for i in range(3)] for name in names}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print()
    print("| piece (8 x 256 tokens) | float32 s | bfloat16 s | float32 / bfloat16 |")
    print("|---|---:|---:|---:|")
    pieces = ("clean run (30 layers + unembedding)", "15 layers", "unembedding, 512 positions")
    for index, piece in enumerate(pieces):
        full, half = best["float32"][index], best["bfloat16"][index]
        print(f"| {piece} | {full:.3f} | {half:.3f} | {full / half:.2f}x |")


if __name__ == "__main__":
    main()
