"""Exact-match scoring of reasoning primitives and the `evaluate` entry point.

Scoring is teacher-forced: one forward pass over prompt + answer tokens, and an
instance is correct when the argmax at every answer position equals the next
answer token. For exact match this is the same as greedy decoding of as many
tokens as the answer has. Greedy decoding reproduces the answer exactly if and
only if each argmax, given the prompt and the answer tokens before it, is the
next answer token. The match is on the canonical tokenization of the answer
(the answer text encoded on its own); a model that spells the same text with
other tokens counts as wrong.

Accuracy intervals are Wilson score intervals (Wilson 1927), which stay inside
[0, 1] and behave at accuracy 0 and 1, unlike the normal approximation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import torch

from depthcurse.evals.context import context_length, fit_to_context
from depthcurse.evals.nll import model_logits
from depthcurse.evals.primitives import Instance, generate_all
from depthcurse.prompts import Prompt, PromptSet, encode, pad_id

DEFAULT_SHOTS = 3
"""Shots per prompt when `evaluate` chooses them, unless the model's context needs fewer."""


class TokenizerError(ValueError):
    """The tokenizer cannot encode the text a task needs."""


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Return the Wilson score interval of a binomial proportion `correct / n`."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = _normal_quantile(1.0 - (1.0 - confidence) / 2.0)
    p = correct / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _normal_quantile(q: float) -> float:
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(q, dtype=torch.float64)))


def _unknown_id(tokenizer: Any) -> int | None:
    token_id = getattr(tokenizer, "unk_token_id", None)
    if token_id is not None:
        return int(token_id)
    inner = getattr(tokenizer, "model", None)
    unk_token = getattr(inner, "unk_token", None)
    if unk_token is not None and hasattr(tokenizer, "token_to_id"):
        found = tokenizer.token_to_id(unk_token)
        return None if found is None else int(found)
    return None


def check_tokenizer(tokenizer: Any, instances: Iterable[Instance]) -> None:
    """Raise TokenizerError when a character that the instances need encodes to nothing or to unknown.

    Every non-space character of every prompt and answer is encoded on its
    own. Byte-level BPE tokenizers pass for any text.
    """
    unknown = _unknown_id(tokenizer)
    needed: dict[str, str] = {}
    for instance in instances:
        for char in instance.prompt + instance.answer:
            if not char.isspace():
                needed.setdefault(char, instance.task)
    for char, task in sorted(needed.items()):
        ids = encode(tokenizer, char)
        if not ids or (unknown is not None and unknown in ids):
            result = "no tokens" if not ids else "the unknown token"
            raise TokenizerError(
                f"the tokenizer encodes {char!r}, which task {task!r} needs, as {result}; "
                "use a tokenizer whose vocabulary covers digits, letters and punctuation "
                "(a byte-level BPE covers all text)"
            )


def instances_to_prompt_set(
    instances: Sequence[Instance], tokenizer: Any, name: str = "primitives"
) -> PromptSet:
    """Tokenize instances as prompt + answer, labelled for per-level analyses.

    Each prompt's `token_ids` are the prompt tokens followed by the answer
    tokens (each text encoded on its own, no special tokens). Labels: task,
    form, level, answer (text), answer_ids, answer_start (index of the first
    answer token), chance, chance_in_prompt, shots, and the prompt text.
    """
    check_tokenizer(tokenizer, instances)
    prompts = []
    for index, instance in enumerate(instances):
        prompt_ids = encode(tokenizer, instance.prompt)
        answer_ids = encode(tokenizer, instance.answer)
        labels = {
            "task": instance.task,
            "form": instance.form,
            "level": instance.level,
            "answer": instance.answer,
            "answer_ids": answer_ids,
            "answer_start": len(prompt_ids),
            "chance": instance.chance,
            "chance_in_prompt": instance.meta["chance_in_prompt"],
            "shots": instance.shots,
            "prompt": instance.prompt,
        }
        name_of = f"{instance.task}-{instance.form}-{instance.level}-{index}"
        prompts.append(Prompt(name_of, prompt_ids + answer_ids, labels))
    return PromptSet(name, prompts, prepend_bos=False, pad_id=pad_id(tokenizer))


@torch.no_grad()
def score_prompt_set(model: Any, prompt_set: PromptSet, batch_size: int = 16) -> list[bool]:
    """Return, per prompt, whether the argmax at every answer position is the answer token."""
    device = _device(model)
    correct = []
    for chunk, ids, _mask in prompt_set.batches(batch_size):
        predicted = model_logits(model, ids.to(device)).argmax(dim=-1).cpu()
        for row, prompt in enumerate(chunk):
            start = prompt.labels["answer_start"]
            answer = torch.tensor(prompt.labels["answer_ids"])
            # Logits at position t predict token t + 1.
            guesses = predicted[row, start - 1 : start - 1 + len(answer)]
            correct.append(bool(torch.equal(guesses, answer)))
    return correct


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def summarize(prompt_set: PromptSet, correct: Sequence[bool], confidence: float = 0.95) -> pd.DataFrame:
    """Aggregate per-prompt correctness into one row per (task, form, level)."""
    rows = [
        {
            **{k: p.labels[k] for k in ("task", "form", "level", "chance", "chance_in_prompt")},
            "shots": p.labels.get("shots"),
            "correct": ok,
        }
        for p, ok in zip(prompt_set.prompts, correct, strict=True)
    ]
    table = pd.DataFrame(rows)
    out = []
    for (task, form, level), group in table.groupby(["task", "form", "level"], sort=False):
        n, hits = len(group), int(group["correct"].sum())
        low, high = wilson_interval(hits, n, confidence)
        row = {
            "task": task,
            "form": form,
            "level": int(level),
            "accuracy": hits / n,
            "ci_low": low,
            "ci_high": high,
            "n": n,
            "chance": float(group["chance"].mean()),
            "chance_in_prompt": float(group["chance_in_prompt"].mean()),
        }
        shots = group["shots"].dropna().unique()
        if len(shots) == 1:  # prompt sets built by hand may lack the label
            row["shots"] = int(shots[0])
        out.append(row)
    result = pd.DataFrame(out)
    result.attrs.update(
        confidence=confidence,
        interval="Wilson score",
        scoring="teacher-forced argmax exact match (equals greedy decoding)",
    )
    return result


def evaluate(
    model: Any,
    tokenizer: Any,
    tasks: Iterable[str] | str | None = None,
    *,
    n_per_level: int = 100,
    seed: int = 0,
    shots: int | None = None,
    levels: dict[str, Iterable[int]] | None = None,
    forms: dict[str, Iterable[str]] | None = None,
    batch_size: int = 16,
    confidence: float = 0.95,
    return_prompts: bool = False,
    **params: Any,
) -> pd.DataFrame | tuple[pd.DataFrame, PromptSet]:
    """Score `model` on generated reasoning primitives; one row per (task, form, level).

    Columns: task, form, level, accuracy, ci_low, ci_high (Wilson interval at
    `confidence`), n, chance, chance_in_prompt and shots. `chance` is a uniform guess
    over all answers of the level, and `chance_in_prompt` a uniform guess among
    the candidates shown in the query (see `depthcurse.evals.primitives`). `model` is anything `model_logits` accepts
    (`DepthcurseLM`, `TransformerBridge`, a transformers causal LM). With
    `return_prompts=True` the `PromptSet` of the instances, with a `correct`
    label per prompt, is returned as well. Extra keyword arguments go to the
    generators (`n_distractors`, `max_value`, `max_operand`, `answer_items`).

    `shots=None` uses `DEFAULT_SHOTS` where the prompts fit the model's context
    (`context_length`), and otherwise the most shots per task that fit, leaving out
    levels that do not fit even with 0 shots (`fit_to_context`). Each such choice is a
    sentence in `table.attrs["notes"]`. An explicit `shots` is used as given, and
    raises ValueError when a prompt is longer than the model's `cfg.max_seq_len`.
    """
    tasks = [tasks] if isinstance(tasks, str) else tasks
    context = context_length(model)
    notes: list[str] = []
    if shots is None and context is not None:
        fit = fit_to_context(
            tokenizer, context, tasks, max_shots=DEFAULT_SHOTS, levels=levels, forms=forms,
            n_per_level=n_per_level, seed=seed, **params,
        )
        instances, notes = fit.instances, fit.notes
    else:
        instances = generate_all(
            tasks, levels=levels, forms=forms, n_per_level=n_per_level, seed=seed,
            shots=DEFAULT_SHOTS if shots is None else shots, **params,
        )
    prompt_set = instances_to_prompt_set(instances, tokenizer)
    if shots is not None:
        _check_prompt_lengths(model, prompt_set, shots)
    correct = score_prompt_set(model, prompt_set, batch_size)
    for prompt, ok in zip(prompt_set.prompts, correct, strict=True):
        prompt.labels["correct"] = ok
    table = summarize(prompt_set, correct, confidence)
    table.attrs.update(seed=seed, shots=shots, n_per_level=n_per_level, notes=notes)
    return (table, prompt_set) if return_prompts else table


def _check_prompt_lengths(model: Any, prompt_set: PromptSet, shots: int) -> None:
    """Raise ValueError when a prompt with the requested `shots` exceeds the model's max_seq_len."""
    # NOTE: only `cfg.max_seq_len` (a DepthcurseLM) is checked. A TransformerBridge's
    # `cfg.n_ctx` is not, because the suite passes explicit shots to bridges whose prompts
    # may be longer, and those run on positions past the context without an error.
    max_len = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    longest_prompt = max(prompt_set.prompts, key=lambda p: len(p.token_ids))
    longest = len(longest_prompt.token_ids)
    if isinstance(max_len, int) and longest > max_len:
        task = longest_prompt.labels.get("task", "?")
        level = longest_prompt.labels.get("level", "?")
        raise ValueError(
            f"the longest prompt ({task}, level {level}) has {longest} tokens but the model's "
            f"max_seq_len is {max_len}. Use fewer shots (now {shots}; --shots on the command "
            f"line) or leave the shots unset to fit them to the context, leave out {task} "
            f"(--tasks), or pass levels without level {level}"
        )
