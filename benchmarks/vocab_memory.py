"""Measure the peak memory of skip effects and perturbations caused by a 49k vocabulary.

Both analyses keep next-token distributions over the whole vocabulary. With
smollm2-135m's 49,152 tokens, one batch of 8 x 256 positions is 384 MiB per
float32 tensor of that shape, so those tensors, not the layers, set the peak.
This script builds a random 4-layer depthcurse model with d_model 64 and that
vocabulary (it runs in seconds), runs one
analysis on 8 random prompts of 256 tokens in a fresh process, and prints how
far the peak resident set size (`ru_maxrss`) grew over the loaded model.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/vocab_memory.py skip_effects
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/vocab_memory.py perturbations
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

VOCAB = 49_152


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("analysis", choices=["skip_effects", "perturbations"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    import depthcurse
    from depthcurse.analyses.perturbations import perturbations
    from depthcurse.analyses.skip_effects import skip_effects
    from depthcurse.checkpoint import save_checkpoint
    from depthcurse.config import ModelConfig
    from depthcurse.model import DepthcurseLM
    from depthcurse.prompts import Prompt, PromptSet

    config = ModelConfig(
        vocab_size=VOCAB, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, d_mlp=128,
        max_seq_len=256,
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vocab-model"
        save_checkpoint(path, DepthcurseLM(config).eval())
        model = depthcurse.load(path)
    generator = torch.Generator().manual_seed(1)
    prompts = PromptSet(
        "random",
        [
            Prompt(f"p{i}", torch.randint(0, VOCAB, (256,), generator=generator).tolist())
            for i in range(8)
        ],
    )
    before = peak_rss_gib()
    start = time.perf_counter()
    if args.analysis == "skip_effects":
        skip_effects(model, prompts, parts=("layer", "attn", "mlp"), progress=False)
    else:
        perturbations(model, prompts, block_size=2, progress=False)
    seconds = time.perf_counter() - start
    after = peak_rss_gib()
    print(f"{args.analysis}: peak RSS {before:.2f} GiB with the model loaded, {after:.2f} GiB "
          f"after the analysis, growth {after - before:.2f} GiB, {seconds:.0f} s")


if __name__ == "__main__":
    main()
