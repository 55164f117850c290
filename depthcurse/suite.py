"""Run the whole analysis suite on one hooked model, and save or read its tables.

`run_suite` is what `depthcurse analyze`, `depthcurse compare` and
`depthcurse reproduce` call for each model. It returns one tidy table per
analysis, each with a `model` column, and caches every table by (model hash,
analysis, arguments) when given a `ResultCache`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from depthcurse.cache import ResultCache
from depthcurse.hardware import release_free_memory, reused_heap

STREAM_ANALYSES = ("residual_norms", "contributions", "cosines", "logit_lens", "layer_similarity")
ANALYSES = (
    *STREAM_ANALYSES,
    "weight_similarity",
    "tuned_lens",
    "skip_effects",
    "depth_score",
    "perturbations",
    "pruning",
    "periodicity",
    "symmetry",
    "evaluation",
    "heldout_nll",
)


ENGINE_ANALYSES = ("skip_effects", "depth_score", "perturbations", "pruning", "periodicity")
"""Analyses that run the layer-by-layer intervention engine (`analyses.engine.LayerStack`)."""

FALLBACK_BLOCK_SIZE = 2


@dataclass
class SuiteOptions:
    """Sizes and choices of one suite run; they are part of every cache key."""

    n_prompts: int = 20
    """Validation-split prompts the analyses run on."""
    prompt_tokens: int = 128
    """Tokens per prompt (capped at the model's context length)."""
    batch_size: int = 4
    """Prompts per forward pass. Memory grows with it: on smollm2 at 20 x 256 tokens
    the whole suite peaked at 2.39 GiB with 4 and at 2.99 GiB with 8, which ran 2%
    faster (one float32 run each on 2 CPU cores, `docs/benchmarks.md`)."""
    skip_parts: tuple[str, ...] = ("layer", "attn", "mlp")
    """Sublayers whose skip-effect matrices are computed."""
    skip_mode: str = "current"
    """Skip-effect mode: "current" or "future" (Csordás et al. 2025)."""
    tuned_lens_steps: int = 20
    """Optimizer steps for the tuned-lens translators, trained on other validation prompts
    after a least-squares start (see `train_tuned_lens`), which does most of the fitting."""
    tuned_lens_tokens: int = 128
    """Tokens per tuned-lens step; each step costs two unembeddings per layer per token."""
    eval_n_per_level: int = 40
    """Generated reasoning-primitive instances per task and level."""
    eval_shots: int | None = None
    """Few-shot examples before each query. None: 3, or the most that fit the model's
    context, per task (`depthcurse.evals.fit_to_context`); a number is used as given."""
    depth_score_per_level: bool = True
    """Also compute the depth score on the reasoning-primitive prompts of each level."""
    depth_score_prompts: int = 8
    """Prompts per level for the per-level depth score (future-mode skips are costly)."""
    future_prompts: int = 10
    """Validation prompts (the first of the `n_prompts`) for the depth score's future-mode
    skips; Csordás et al. 2025 use 10 prompts in future mode and 20 in current mode."""
    block_size: int | None = None
    """Block size for block perturbations and symmetry. None reads it from the growth
    history, and a model without one (a baseline, a public model) uses
    `FALLBACK_BLOCK_SIZE` (1 when that does not divide its depth)."""
    seed: int = 0
    """Seed of prompt sampling, bootstraps and generated tasks."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first option whose type or value is invalid."""
        from depthcurse.config import ConfigError

        def fail(name: str, rule: str) -> None:
            raise ConfigError(
                f"analysis option {name} = {getattr(self, name)!r} is invalid: it must be {rule}"
            )

        minimum = {
            "n_prompts": 1, "prompt_tokens": 2, "batch_size": 1, "tuned_lens_steps": 0,
            "tuned_lens_tokens": 1, "eval_n_per_level": 1, "eval_shots": 0,
            "depth_score_prompts": 1, "future_prompts": 1, "block_size": 1, "seed": 0,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            optional = name in ("block_size", "eval_shots")
            if optional and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                fail(name, f"an integer >= {low}" + (" or none" if optional else ""))
        if not isinstance(self.depth_score_per_level, bool):
            fail("depth_score_per_level", "true or false")
        if self.skip_mode not in ("current", "future"):
            fail("skip_mode", '"current" or "future"')
        parts = ("layer", "attn", "mlp")
        if isinstance(self.skip_parts, str):
            self.skip_parts = (self.skip_parts,)
        self.skip_parts = tuple(self.skip_parts)
        if not self.skip_parts or any(part not in parts for part in self.skip_parts):
            fail("skip_parts", f"a non-empty list drawn from {list(parts)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SuiteOptions:
        from depthcurse.config import check_keys

        check_keys(cls, values, "analysis option")
        # Set the fields one by one, then validate, because values from TOML or the
        # command line may have any type and the error should name the option.
        options = cls()
        for name, value in values.items():
            setattr(options, name, value)
        options.validate()
        return options


def progress_bars() -> bool:
    """Return whether to draw tqdm bars: only when stderr is a terminal.

    Redirected to a file, each bar update would leave a carriage-return line in the log.
    """
    return sys.stderr.isatty()


def check_analyses(only: Iterable[str] | None) -> tuple[str, ...]:
    """Return the requested analysis names in suite order, rejecting unknown ones by name."""
    if only is None:
        return ANALYSES
    requested = list(only)
    unknown = [name for name in requested if name not in ANALYSES]
    if unknown:
        raise ValueError(f"unknown analysis {unknown[0]!r}; choose from: {', '.join(ANALYSES)}")
    return tuple(name for name in ANALYSES if name in requested)


def model_label(model: Any) -> str:
    """Return the model's label for the `model` column (see `depthcurse.sources.checkpoint_label`)."""
    from depthcurse.sources import checkpoint_label

    info = getattr(model, "depthcurse_info", None)
    if info is None:
        return type(model).__name__
    return checkpoint_label(info.source)


def suite_prompts(model: Any, options: SuiteOptions, *, offset: int = 0) -> Any:
    """Return validation-split prompts for `model`'s tokenizer; `offset` skips that many prompts."""
    from depthcurse.prompts import PromptSet, validation_prompts

    n_ctx = int(getattr(model.cfg, "n_ctx", None) or options.prompt_tokens)
    tokens = min(options.prompt_tokens, n_ctx)
    prompts = validation_prompts(model.tokenizer, options.n_prompts + offset, tokens)
    chosen = prompts.prompts[offset : offset + options.n_prompts]
    return PromptSet(f"validation-{offset}", chosen, prompts.prepend_bos, prompts.pad_id)


def run_suite(
    model: Any,
    prompts: Any = None,
    *,
    only: Iterable[str] | None = None,
    options: SuiteOptions | None = None,
    label: str | None = None,
    cache: ResultCache | None = None,
    model_digest: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, pd.DataFrame]:
    """Run the requested analyses on `model` and return {analysis name: table}.

    `prompts` defaults to `options.n_prompts` validation-split prompts of the
    default corpus. With `cache` and `model_digest`, each table is read from
    or written to the cache, keyed also by the options and the prompt set.
    While the intervention analyses run, glibc's malloc reuses freed blocks instead of
    mapping new pages (`depthcurse.hardware.reused_heap`), and free pages go back to
    the kernel after every analysis.
    """
    options = options or SuiteOptions()
    names = check_analyses(only)
    label = label or model_label(model)
    dtype = model_dtype(model)
    if model_digest is not None:
        model_digest = dtype_digest(model_digest, dtype)
    prompts = prompts if prompts is not None else suite_prompts(model, options)
    tables: dict[str, pd.DataFrame] = {}
    arguments = {"options": options.to_dict(), "prompts": prompt_fingerprint(prompts)}

    def compute(name: str, function: Callable[[], pd.DataFrame]) -> None:
        if progress is not None:
            progress(name)
        if cache is not None and model_digest is not None:
            table = cache.get_or_compute(model_digest, name, arguments, function)
        else:
            table = function()
        table = table.copy()
        table["model"] = label
        table["model_dtype"] = dtype
        tables[name] = table
        # Hand the freed heap pages of this analysis back, so that the next one starts
        # near the live memory instead of on top of the last one's peak.
        release_free_memory()

    stream_names = [n for n in names if n in STREAM_ANALYSES]
    if stream_names:
        stream_tables = _stream_tables(
            model, prompts, stream_names, options, cache, model_digest, arguments
        )
        for name in stream_names:
            compute(name, lambda name=name: stream_tables[name]())
    # Intermediate results that one analysis computes and a later one reuses. Each
    # runner falls back to computing its own when an entry is missing, for example
    # when the earlier analysis came from the cache.
    shared: dict[str, Any] = {"analyses": names}
    for name in names:
        if name in STREAM_ANALYSES:
            continue
        runner = _ANALYSIS_RUNNERS[name]
        # The layer-by-layer engine makes large tensors thousands of times; reusing freed
        # heap blocks spares their page faults (see `reused_heap`). Part 1's stream pass ran
        # no faster in a reused heap and peaked at 4.2 GiB (smollm2, 20 x 256 tokens).
        heap = reused_heap() if name in ENGINE_ANALYSES else nullcontext()
        with heap:
            compute(name, lambda runner=runner: runner(model, prompts, options, shared))
    return tables


def dtype_digest(digest: str, dtype: str) -> str:
    """Return the cache key of weights with hash `digest` run in `dtype`.

    Rounding changes the results, so each dtype has its own cache entries. float32 keeps
    the plain weight hash, which caches written before dtypes were an option use.
    """
    return digest if dtype == "float32" else f"{digest}-{dtype}"


def model_dtype(model: Any) -> str:
    """Return the name of the dtype a model's weights are in, e.g. "float32"."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def _stream_tables(
    model: Any,
    prompts: Any,
    names: list[str],
    options: SuiteOptions,
    cache: ResultCache | None,
    model_digest: str | None,
    arguments: dict[str, Any],
) -> dict[str, Callable[[], pd.DataFrame]]:
    """Return lazy table builders sharing one forward pass, run only on a cache miss."""
    from depthcurse.analyses import collect_stream

    state: dict[str, Any] = {}

    def stats() -> Any:
        if "stats" not in state:
            state["stats"] = collect_stream(
                model, prompts, analyses=names, batch_size=options.batch_size
            )
        return state["stats"]

    builders = {
        "residual_norms": lambda: stats().residual_norms(),
        "contributions": lambda: stats().contributions(),
        "cosines": lambda: stats().cosines(),
        "logit_lens": lambda: stats().logit_lens(),
        "layer_similarity": lambda: stats().layer_similarity(weights=False),
    }
    return {name: builders[name] for name in names}


def _weight_similarity(
    model: Any, prompts: Any, options: SuiteOptions, shared: dict
) -> pd.DataFrame:
    from depthcurse.analyses import weight_similarity

    return weight_similarity(model)


def _tuned_lens(model: Any, prompts: Any, options: SuiteOptions, shared: dict) -> pd.DataFrame:
    from depthcurse.analyses import train_tuned_lens, tuned_lens

    train_prompts = suite_prompts(model, options, offset=len(prompts))
    lens = train_tuned_lens(
        model,
        train_prompts,
        steps=options.tuned_lens_steps,
        tokens_per_step=options.tuned_lens_tokens,
        batch_size=options.batch_size,
        seed=options.seed,
        save=False,
    )
    return tuned_lens(model, prompts, lens=lens, batch_size=options.batch_size)


def _skip_effects(model: Any, prompts: Any, options: SuiteOptions, shared: dict) -> pd.DataFrame:
    from depthcurse.analyses.skip_effects import (
        skip_effect_arrays_by_part,
        skip_effects_from_arrays,
    )

    # Pruning's layer removals are the current-mode layer skips, so compute their NLL here.
    reusable = (
        "pruning" in shared["analyses"]
        and "layer" in options.skip_parts
        and options.skip_mode == "current"
    )
    by_part = skip_effect_arrays_by_part(
        model,
        prompts,
        parts=options.skip_parts,
        mode=options.skip_mode,
        batch_size=options.batch_size,
        seed=options.seed,
        progress=progress_bars(),
        removal_nll=reusable,
    )
    if reusable:
        shared["skip_arrays_layer_current"] = by_part["layer"]
    return skip_effects_from_arrays(model, prompts, by_part, mode=options.skip_mode)


def _depth_score(model: Any, prompts: Any, options: SuiteOptions, shared: dict) -> pd.DataFrame:
    from depthcurse.analyses.depth_score import depth_score

    common = {
        "part": "layer", "mode": "future", "seed": options.seed,
        "batch_size": options.batch_size, "progress": progress_bars(),
    }
    validation = {"validation": first_prompts(prompts, options.future_prompts)}
    tables = [depth_score(model, validation, **common)]
    if options.depth_score_per_level:
        # Task prompts are intervened on at their answer start, one t per prompt, as
        # Csordás et al. 2025 do for multi-hop questions: the score then measures how the
        # answer uses the computation over the question's tokens.
        levels = _primitive_level_sets(model, options)
        tables.append(depth_score(model, levels, future_at="answer", **common))
    return pd.concat(tables, ignore_index=True)


def first_prompts(prompts: Any, n: int) -> Any:
    """Return a `PromptSet` of the first `n` prompts (all of them when there are fewer)."""
    from depthcurse.prompts import PromptSet

    if len(prompts) <= n:
        return prompts
    return PromptSet(prompts.name, prompts.prompts[:n], prompts.prepend_bos, prompts.pad_id)


def _primitive_level_sets(model: Any, options: SuiteOptions) -> dict[str, Any]:
    """Return {"variable_assignment/level=k": prompts} for each depth of variable assignment."""
    from depthcurse.evals import evaluate
    from depthcurse.prompts import PromptSet

    _, prompt_set = evaluate(
        model,
        model.tokenizer,
        tasks=["variable_assignment"],
        n_per_level=options.depth_score_prompts,
        seed=options.seed,
        shots=options.eval_shots,
        return_prompts=True,
    )
    sets = {}
    for level in sorted({p.labels.get("level") for p in prompt_set.prompts}):
        chosen = [p for p in prompt_set.prompts if p.labels.get("level") == level]
        sets[f"variable_assignment/level={level}"] = PromptSet(
            f"variable_assignment-{level}", chosen, prompt_set.prepend_bos, prompt_set.pad_id
        )
    return sets


def block_size_for(model: Any, options: SuiteOptions) -> int:
    """Return `options.block_size`, else the growth history's, else `FALLBACK_BLOCK_SIZE` or 1."""
    from depthcurse.analyses.perturbations import block_size_of

    if options.block_size is not None:
        return options.block_size
    try:
        return block_size_of(model)
    except ValueError:
        # NOTE: a model that was never grown has no block size of its own; compare it with
        # grown models by passing theirs in SuiteOptions.block_size.
        return FALLBACK_BLOCK_SIZE if model.cfg.n_layers % FALLBACK_BLOCK_SIZE == 0 else 1


def _perturbations(model: Any, prompts: Any, options: SuiteOptions, shared: dict) -> pd.DataFrame:
    from depthcurse.analyses.perturbations import perturbations

    return perturbations(
        model,
        prompts,
        block_size=block_size_for(model, options),
        seed=options.seed,
        batch_size=options.batch_size,
        progress=progress_bars(),
    )


def _pruning(model: Any, prompts: Any, options: SuiteOptions, shared: dict) -> pd.DataFrame:
    from depthcurse.analyses.pruning import pruning_metrics

    return pruning_metrics(
        model,
        prompts,
        batch_size=options.batch_size,
        skip_arrays=shared.get("skip_arrays_layer_current"),
    )


def _periodicity(model: Any, prompts: Any, options: SuiteOptions, shared: dict) -> pd.DataFrame:
    from depthcurse.analyses.periodicity import periodicity

    return periodicity(model, prompts, batch_size=options.batch_size)


def _symmetry(model: Any, prompts: Any, options: SuiteOptions, shared: dict) -> pd.DataFrame:
    from depthcurse.analyses.symmetry import symmetry_scores

    return symmetry_scores(model, block_size=block_size_for(model, options))


def _evaluation(model: Any, prompts: Any, options: SuiteOptions, shared: dict) -> pd.DataFrame:
    from depthcurse.evals import evaluate

    return evaluate(
        model,
        model.tokenizer,
        n_per_level=options.eval_n_per_level,
        seed=options.seed,
        shots=options.eval_shots,
        batch_size=options.batch_size,
    )


def _heldout_nll(model: Any, prompts: Any, options: SuiteOptions, shared: dict) -> pd.DataFrame:
    import torch

    from depthcurse.evals import heldout_nll

    width = min(len(p.token_ids) for p in prompts.prompts)
    tokens = torch.tensor([p.token_ids[:width] for p in prompts.prompts])
    result = heldout_nll(model, tokens, batch_size=options.batch_size, seed=options.seed)
    return pd.DataFrame([result.to_dict()])


_ANALYSIS_RUNNERS: dict[str, Callable[[Any, Any, SuiteOptions, dict[str, Any]], pd.DataFrame]] = {
    "weight_similarity": _weight_similarity,
    "tuned_lens": _tuned_lens,
    "skip_effects": _skip_effects,
    "depth_score": _depth_score,
    "perturbations": _perturbations,
    "pruning": _pruning,
    "periodicity": _periodicity,
    "symmetry": _symmetry,
    "evaluation": _evaluation,
    "heldout_nll": _heldout_nll,
}


def prompt_fingerprint(prompts: Any) -> str:
    """Return a short hash of a prompt set's token ids, for cache keys."""
    import hashlib

    digest = hashlib.sha256()
    for prompt in getattr(prompts, "prompts", []):
        digest.update(json.dumps(prompt.token_ids).encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------
# Saving and reading tables


def save_tables(tables: dict[str, pd.DataFrame], folder: str | Path) -> Path:
    """Write each table as `NAME.parquet` and `NAME.csv` into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table = parquet_safe(table)
        table.to_parquet(folder / f"{name}.parquet", index=False)
        table.to_csv(folder / f"{name}.csv", index=False)
    return folder


def parquet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Return `table` with mixed-type object columns turned into strings, which parquet needs."""
    table = table.copy()
    for column in table.columns:
        if table[column].dtype == object:
            kinds = {type(v) for v in table[column].dropna()}
            if len(kinds) > 1 or kinds & {list, dict, tuple}:
                table[column] = table[column].map(lambda v: v if v is None else str(v))
    return table


def load_tables(folder: str | Path) -> dict[str, pd.DataFrame]:
    """Read every `NAME.parquet` in `folder` back as {NAME: table}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"table folder {folder} does not exist; run the analyses first")
    tables = {path.stem: pd.read_parquet(path) for path in sorted(folder.glob("*.parquet"))}
    if not tables:
        raise FileNotFoundError(f"{folder} contains no .parquet tables; run the analyses first")
    return tables
