"""Fit generated reasoning-primitive prompts to a model's context length.

Each prompt is `shots` solved problems and then the query, so its length grows with the
shots and with the level. `fit_to_context` chooses, per task, the most shots up to
`max_shots` at which every prompt of the task fits the context, so all levels of a task
are scored with the same shots. A (task, form, level) whose prompts do not fit even with 0
shots is left out. Every choice below `max_shots` and every left-out level is described in
`ContextFit.notes`.

A prompt's length is that of its scored sequence: the prompt tokens followed by the answer
tokens, each text encoded on its own, as `instances_to_prompt_set` builds it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from depthcurse.evals.primitives import Instance, PrimitiveError, generate, generate_all
from depthcurse.prompts import encode


@dataclass
class ContextFit:
    """Instances that fit a context, with the shots chosen per task and why fewer were used."""

    instances: list[Instance]
    shots: dict[str, int]
    """Shots per task that kept at least one level."""
    notes: list[str] = field(default_factory=list)
    """One sentence per task given fewer shots than requested and per level left out."""


def context_length(model: Any) -> int | None:
    """Return the number of positions `model` was built for, or None when its config has none.

    Reads `cfg.max_seq_len` (a `DepthcurseLM`) or `cfg.n_ctx` (a TransformerLens model).
    """
    cfg = getattr(model, "cfg", None)
    for name in ("max_seq_len", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def sequence_length(instance: Instance, tokenizer: Any) -> int:
    """Return the number of tokens of the prompt followed by the answer, as they are scored."""
    return len(encode(tokenizer, instance.prompt)) + len(encode(tokenizer, instance.answer))


def _longest(instances: list[Instance], tokenizer: Any) -> tuple[int, Instance]:
    lengths = [(sequence_length(instance, tokenizer), instance) for instance in instances]
    return max(lengths, key=lambda pair: pair[0])


def _group(instances: Iterable[Instance]) -> dict[tuple[str, str, int], list[Instance]]:
    groups: dict[tuple[str, str, int], list[Instance]] = {}
    for instance in instances:
        groups.setdefault((instance.task, instance.form, instance.level), []).append(instance)
    return groups


def fit_to_context(
    tokenizer: Any,
    context: int,
    tasks: Iterable[str] | str | None = None,
    *,
    max_shots: int = 3,
    levels: dict[str, Iterable[int]] | None = None,
    forms: dict[str, Iterable[str]] | None = None,
    n_per_level: int = 100,
    seed: int = 0,
    **params: Any,
) -> ContextFit:
    """Generate instances whose prompts fit `context` tokens, with the most shots that allow it.

    The arguments are those of `generate_all`, with `max_shots` in place of `shots`.
    Instances with s shots are those `generate_all(..., shots=s)` returns. Raises
    ValueError when no (task, form, level) fits even with 0 shots.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"context must be a positive number of tokens, got {context!r}")
    if isinstance(max_shots, bool) or not isinstance(max_shots, int) or max_shots < 0:
        raise PrimitiveError(f"max_shots must be a non-negative integer, got {max_shots!r}")
    without_shots = _group(
        generate_all(tasks, levels=levels, forms=forms, n_per_level=n_per_level, seed=seed,
                     shots=0, **params)
    )
    notes: list[str] = []
    fitting: dict[str, list[tuple[str, int]]] = {}
    for (task, form, level), instances in without_shots.items():
        longest, _ = _longest(instances, tokenizer)
        if longest > context:
            notes.append(
                f"{task} ({form}, level {level}) left out: even with 0 shots its longest prompt "
                f"has {longest} tokens, more than the model's {context} positions"
            )
            continue
        fitting.setdefault(task, []).append((form, level))
    if not fitting:
        raise ValueError(
            f"no task, form and level fits the model's {context} positions even with 0 shots. "
            "Evaluate a model with a longer context"
        )

    chosen: list[Instance] = []
    shots_per_task: dict[str, int] = {}
    for task, combinations in fitting.items():
        shots, instances, too_long = _max_fitting_shots(
            tokenizer, context, task, combinations, max_shots, without_shots, n_per_level, seed,
            params,
        )
        shots_per_task[task] = shots
        chosen += instances
        if too_long is not None:
            length, instance = too_long
            plural = "shot" if shots == 1 else "shots"
            notes.append(
                f"{task}: {shots} {plural} instead of {max_shots}, the most that fit the model's "
                f"{context} positions (with {shots + 1} shots its longest prompt, "
                f"{instance.form} level {instance.level}, has {length} tokens)"
            )
    return ContextFit(chosen, shots_per_task, notes)


def _max_fitting_shots(
    tokenizer: Any,
    context: int,
    task: str,
    combinations: list[tuple[str, int]],
    max_shots: int,
    without_shots: dict[tuple[str, str, int], list[Instance]],
    n_per_level: int,
    seed: int,
    params: dict[str, Any],
) -> tuple[int, list[Instance], tuple[int, Instance] | None]:
    """Return (shots, instances, longest prompt at one shot more) for one task's combinations.

    The third item is None when `max_shots` fit.
    """
    too_long = None
    for shots in range(max_shots, 0, -1):
        instances = [
            instance
            for form, level in combinations
            for instance in generate(task, level, n_per_level, seed=seed, form=form, shots=shots,
                                     **params)
        ]
        longest = _longest(instances, tokenizer)
        if longest[0] <= context:
            return shots, instances, too_long
        too_long = longest
    instances = [
        instance for form, level in combinations for instance in without_shots[(task, form, level)]
    ]
    return 0, instances, too_long
