"""Reasoning primitives generated offline from a seed, with few-shot prompts.

Three tasks, after the reasoning primitives of Saunshi et al. 2024 (MIDAS,
arXiv 2409.19044):

- `induction` (forms `words`, `symbols`; level 1, 2, 3 = a sequence of 6, 12,
  24 distinct items). The prompt shows a sequence and starts copying it; the
  answer is the next `answer_items` items of the copy.
- `variable_assignment` (forms `text`, `code`; level 0, 1, 2 = hops). A chain
  `r = 7, x = r, q = x` of `level` + 1 assignments ends at the queried variable;
  `n_distractors` other chains of random depth <= level use other variables and
  other values. Statements of different chains are interleaved, each chain keeps
  its order.
- `arithmetic` (form `text`; level 1, 2, 3 = operations). Additions and
  subtractions of operands in 1..max_operand, evaluated left to right, with every
  intermediate result >= 0.

Every instance is `shots` solved problems of the same task, form and level,
then the query. The answer follows the prompt directly and starts with a space.

Answer visibility (the exact rule that `answer_visibility_errors` checks; a
number "occurs" when it appears with no digit directly before or after it):

- `variable_assignment`: the answer value occurs exactly once in the whole
  prompt, at the root assignment of the queried chain. Distractors and shots
  never use it. At depth 0 the root assignment is the queried variable's own
  assignment, so the value is necessarily readable there: depth 0 tests
  retrieval of the right one among 1 + n_distractors values, not the absence
  of the value.
- `arithmetic`: the answer does not occur anywhere in the prompt (neither as an
  operand of the query nor anywhere in the shots).
- `induction`: exempt, because copying from the prompt is the task. Items in a
  sequence are distinct, so the continuation is unique.

Two chance levels per instance, stored in `meta`:

- `chance`: a uniform guess over every answer the level can produce. Variable
  assignment, 1 / (max_value + 1); induction, (1 / pool size) ** answer_items
  (64 words or 24 symbols); arithmetic, 1 / ((operations + 1) * max_operand + 1).
- `chance_in_prompt`: a uniform guess among the candidates shown in the query
  problem, a stronger baseline for a model that copies from its context without
  solving the task. Variable assignment, 1 / (1 + n_distractors); induction,
  (1 / sequence length) ** answer_items; arithmetic, 0, because the answer never
  occurs in the prompt.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

TASKS: dict[str, dict[str, Any]] = {
    "induction": {"forms": ("words", "symbols"), "levels": (1, 2, 3)},
    "variable_assignment": {"forms": ("text", "code"), "levels": (0, 1, 2)},
    "arithmetic": {"forms": ("text",), "levels": (1, 2, 3)},
}

INDUCTION_LENGTHS = {1: 6, 2: 12, 3: 24}

# Short common English words: a byte-level BPE trained on English text keeps most as one token.
WORDS = (
    "apple bird cat dog egg fish goat hat ink jar key lamp moon nest oak pen queen rain sun tree "
    "cup van wolf box yard zoo bell cake door fan gold hill iron jam kite leaf milk nut owl pig "
    "rope salt tent vase wind road ship star ring corn bean coat drum farm gate horn lake mill "
    "pond rock sand wall"
).split()
SYMBOLS = tuple("ABCDEFGHJKLMNPQRSTUVWXYZ")
VARIABLES = tuple(c for c in string.ascii_lowercase if c not in "lo")  # l and o look like 1 and 0


class PrimitiveError(ValueError):
    """An invalid task name, form, level or generator setting."""


@dataclass(frozen=True)
class Instance:
    """One few-shot problem: the full prompt, the expected continuation and how it was made.

    `prompt` is the shots and the query; `query` is the query problem alone
    (the end of `prompt`); `answer` is the text that must follow `prompt`.
    """

    task: str
    form: str
    level: int
    prompt: str
    answer: str
    query: str
    shots: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def chance(self) -> float:
        return float(self.meta["chance"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "form": self.form,
            "level": self.level,
            "prompt": self.prompt,
            "answer": self.answer,
            "query": self.query,
            "shots": self.shots,
            **{f"meta_{key}": value for key, value in self.meta.items()},
        }


@dataclass(frozen=True)
class _Problem:
    """A solved problem: `text` + `answer` is a complete example."""

    text: str
    answer: str
    meta: dict[str, Any]


def check_task(task: str, form: str | None = None, level: int | None = None) -> None:
    """Raise PrimitiveError naming the value when a task, form or level is not supported."""
    if task not in TASKS:
        raise PrimitiveError(f"unknown task {task!r}; available tasks: {', '.join(TASKS)}")
    spec = TASKS[task]
    if form is not None and form not in spec["forms"]:
        raise PrimitiveError(
            f"unknown form {form!r} for task {task!r}; available forms: {', '.join(spec['forms'])}"
        )
    if level is not None and (isinstance(level, bool) or level not in spec["levels"]):
        raise PrimitiveError(
            f"level {level!r} is outside the supported levels of task {task!r}: "
            f"{', '.join(map(str, spec['levels']))}"
        )


def _occurrences(number: str, text: str) -> list[int]:
    """Return the start offsets of `number` in `text` with no digit directly around it."""
    return [m.start() for m in re.finditer(rf"(?<![0-9]){re.escape(number)}(?![0-9])", text)]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PrimitiveError(f"{name} must be a positive integer, got {value!r}")


# --- induction -----------------------------------------------------------------------------------


def _induction_problem(
    rng: random.Random, form: str, level: int, answer_items: int, solved: bool
) -> _Problem:
    pool = WORDS if form == "words" else SYMBOLS
    length = INDUCTION_LENGTHS[level]
    items = rng.sample(pool, length)
    sequence = " ".join(items)
    if solved:
        return _Problem(f"Copy: {sequence}. Again:", f" {sequence}.", {})
    prefix = rng.randint(1, length - answer_items)
    copied = " ".join(items[:prefix])
    answer = " " + " ".join(items[prefix : prefix + answer_items])
    meta = {
        "length": length,
        "prefix": prefix,
        "chance": (1.0 / len(pool)) ** answer_items,
        "chance_in_prompt": (1.0 / length) ** answer_items,
    }
    return _Problem(f"Copy: {sequence}. Again: {copied}", answer, meta)


# --- variable assignment -------------------------------------------------------------------------


def _statement(form: str, name: str, value: str) -> str:
    return f"let {name} be {value}" if form == "text" else f"{name} = {value}"


def _assignment_problem(
    rng: random.Random,
    form: str,
    depth: int,
    n_distractors: int,
    max_value: int,
    exclude: set[str],
    answer: str | None = None,
) -> _Problem:
    """Build a problem whose values avoid `exclude`; the queried chain's value is `answer` if given."""
    names = rng.sample(VARIABLES, (depth + 1) * (n_distractors + 1))
    values = [str(v) for v in range(max_value + 1) if str(v) not in exclude and str(v) != answer]
    if len(values) < n_distractors + (answer is None):
        raise PrimitiveError(
            f"max_value={max_value} leaves too few distinct values for {n_distractors} distractors "
            "and the shots; raise max_value or lower n_distractors"
        )
    chosen = rng.sample(values, n_distractors + (answer is None))

    root_value = answer if answer is not None else chosen.pop()
    # Chain 0 is the queried one with exactly `depth` hops; distractor chains have 0..depth hops.
    chains: list[list[tuple[str, str]]] = []
    for index, value in enumerate([root_value, *chosen]):
        hops = depth if index == 0 else rng.randint(0, depth)
        chain_names = names[index * (depth + 1) : index * (depth + 1) + hops + 1]
        links = [(chain_names[0], value)]
        links += [(chain_names[i], chain_names[i - 1]) for i in range(1, len(chain_names))]
        chains.append(links)

    order = [c for c, links in enumerate(chains) for _ in links]
    rng.shuffle(order)
    position = [0] * len(chains)
    statements, root_index = [], 0
    for chain in order:
        name, value = chains[chain][position[chain]]
        if chain == 0 and position[chain] == 0:
            root_index = len(statements)
        statements.append(_statement(form, name, value))
        position[chain] += 1

    target = chains[0][-1][0]
    if form == "text":
        body = ". ".join(s[0].upper() + s[1:] for s in statements) + "."
        text = f"{body} So {target} is"
        before = ". ".join(s[0].upper() + s[1:] for s in statements[:root_index])
        root_offset = len(before) + (2 if root_index else 0) + len(statements[root_index]) - len(root_value)
    else:
        text = "\n".join(statements) + f"\nprint({target})  # prints"
        before = "\n".join(statements[:root_index])
        root_offset = len(before) + (1 if root_index else 0) + len(statements[root_index]) - len(root_value)

    bindings = {name: chain[0][1] for chain in chains for name, _ in chain}
    meta = {
        "target": target,
        "bindings": bindings,
        "root_offset": root_offset,
        "n_values": n_distractors + 1,
        "chance": 1.0 / (max_value + 1),
        "chance_in_prompt": 1.0 / (n_distractors + 1),
    }
    return _Problem(text, f" {root_value}", meta)


# --- arithmetic ----------------------------------------------------------------------------------


def _arithmetic_problem(rng: random.Random, operations: int, max_operand: int) -> _Problem:
    while True:
        operands = [rng.randint(1, max_operand) for _ in range(operations + 1)]
        operators = [rng.choice("+-") for _ in range(operations)]
        result, valid = operands[0], True
        for operator, operand in zip(operators, operands[1:], strict=True):
            result = result + operand if operator == "+" else result - operand
            valid = valid and result >= 0
        if valid:
            break
    expression = str(operands[0]) + "".join(
        f" {op} {x}" for op, x in zip(operators, operands[1:], strict=True)
    )
    chance = 1.0 / ((operations + 1) * max_operand + 1)
    return _Problem(f"{expression} =", f" {result}", {"chance": chance, "chance_in_prompt": 0.0})


# --- instances -----------------------------------------------------------------------------------


def _separator(task: str, form: str) -> str:
    return "\n\n" if (task, form) == ("variable_assignment", "code") else "\n"


def _max_tries(n: int) -> int:
    return 1000 + 100 * n


def generate(
    task: str,
    level: int,
    n: int,
    *,
    seed: int = 0,
    form: str | None = None,
    shots: int = 3,
    answer_items: int = 1,
    n_distractors: int = 2,
    max_value: int = 9,
    max_operand: int = 20,
) -> list[Instance]:
    """Generate `n` instances of one task, form and level, the same for the same arguments.

    `form` defaults to the task's first form. The random stream is seeded by
    (seed, task, form, level), so adding a level leaves the other levels'
    instances unchanged. `answer_items` sets the induction answer length,
    `n_distractors` and `max_value` (values are 0..max_value) set variable
    assignment, and `max_operand` sets arithmetic.
    """
    form = form if form is not None else TASKS.get(task, {"forms": (None,)})["forms"][0]
    check_task(task, form, level)
    _check_positive(n=n, answer_items=answer_items, max_value=max_value, max_operand=max_operand)
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
        raise PrimitiveError(f"shots must be a non-negative integer, got {shots!r}")
    if not isinstance(n_distractors, int) or n_distractors < 0:
        raise PrimitiveError(f"n_distractors must be a non-negative integer, got {n_distractors!r}")
    if task == "induction" and answer_items >= INDUCTION_LENGTHS[level]:
        raise PrimitiveError(
            f"answer_items={answer_items} must be below the sequence length "
            f"{INDUCTION_LENGTHS[level]} of induction level {level}"
        )
    if task == "variable_assignment" and (level + 1) * (n_distractors + 1) > len(VARIABLES):
        raise PrimitiveError(
            f"n_distractors={n_distractors} at depth {level} needs more than the "
            f"{len(VARIABLES)} variable names; lower n_distractors"
        )
    rng = random.Random(f"depthcurse-primitives/{seed}/{task}/{form}/{level}")
    separator = _separator(task, form)
    instances = []
    for _ in range(n):
        query, solved = _query_and_shots(
            rng, task, form, level, shots, answer_items, n_distractors, max_value, max_operand
        )
        head = "".join(p.text + p.answer + separator for p in solved)
        meta = dict(query.meta)
        if "root_offset" in meta:
            meta["root_offset"] += len(head)
        instances.append(
            Instance(task, form, level, head + query.text, query.answer, query.text, shots, meta)
        )
    return instances


def _query_and_shots(
    rng: random.Random,
    task: str,
    form: str,
    level: int,
    shots: int,
    answer_items: int,
    n_distractors: int,
    max_value: int,
    max_operand: int,
) -> tuple[_Problem, list[_Problem]]:
    if task == "induction":
        query = _induction_problem(rng, form, level, answer_items, solved=False)
        solved = [_induction_problem(rng, form, level, answer_items, True) for _ in range(shots)]
        return query, solved
    if task == "variable_assignment":
        query = _assignment_problem(rng, form, level, n_distractors, max_value, exclude=set())
        value = query.answer.strip()
        solved = [
            _assignment_problem(rng, form, level, n_distractors, max_value, exclude={value})
            for _ in range(shots)
        ]
        return query, solved
    for _ in range(_max_tries(1)):
        query = _arithmetic_problem(rng, level, max_operand)
        if not _occurrences(query.answer.strip(), query.text):
            break
    else:
        raise PrimitiveError(f"max_operand={max_operand} is too small for arithmetic level {level}")
    value, solved = query.answer.strip(), []
    for _ in range(_max_tries(shots)):
        if len(solved) == shots:
            break
        shot = _arithmetic_problem(rng, level, max_operand)
        if not _occurrences(value, shot.text + shot.answer) and shot.text != query.text:
            solved.append(shot)
    else:
        raise PrimitiveError(f"max_operand={max_operand} is too small for {shots} arithmetic shots")
    return query, solved


def answer_visibility_errors(instance: Instance) -> list[str]:
    """Return the ways `instance` breaks the answer visibility rule of its task (empty if none)."""
    value = instance.answer.strip()
    found = _occurrences(value, instance.prompt)
    if instance.task == "arithmetic":
        return [f"answer {value!r} occurs in the prompt at offset {i}" for i in found]
    if instance.task == "variable_assignment":
        root = instance.meta["root_offset"]
        errors = [f"answer {value!r} occurs outside the root assignment at offset {i}" for i in found if i != root]
        if root not in found:
            errors.append(f"answer {value!r} is not at the root assignment (offset {root})")
        return errors
    items = instance.query.split(". Again:")[0].removeprefix("Copy: ").split()
    if len(set(items)) != len(items):
        return [f"induction sequence repeats an item: {items}"]
    return []


def generate_all(
    tasks: Iterable[str] | None = None,
    *,
    levels: dict[str, Iterable[int]] | None = None,
    forms: dict[str, Iterable[str]] | None = None,
    n_per_level: int = 50,
    seed: int = 0,
    shots: int = 3,
    **params: Any,
) -> list[Instance]:
    """Generate `n_per_level` instances for every (task, form, level) asked for.

    `tasks` defaults to all tasks; `levels` and `forms` map a task to the levels
    or forms to use (default: all supported). Extra keyword arguments go to
    `generate`.
    """
    if tasks is None:
        tasks = list(TASKS)
    elif isinstance(tasks, str):
        tasks = [tasks]
    else:
        tasks = list(tasks)
    for key, mapping in (("levels", levels or {}), ("forms", forms or {})):
        for task in mapping:
            if task not in tasks:
                raise PrimitiveError(f"{key} names task {task!r}, which is not in tasks={tasks}")
    instances = []
    for task in tasks:
        check_task(task)
        for form in (forms or {}).get(task, TASKS[task]["forms"]):
            for level in (levels or {}).get(task, TASKS[task]["levels"]):
                instances += generate(
                    task, level, n_per_level, seed=seed, form=form, shots=shots, **params
                )
    return instances


def training_documents(
    n_documents: int,
    *,
    seed: int = 0,
    tasks: Iterable[str] | None = None,
    levels: dict[str, Iterable[int]] | None = None,
    forms: dict[str, Iterable[str]] | None = None,
    problems_per_document: int = 8,
    all_queries: bool = True,
    n_distractors: int = 2,
    max_value: int = 9,
    max_operand: int = 20,
) -> list[str]:
    """Generate solved reasoning-primitive problems as training text, one string per document.

    Each document contains `problems_per_document` solved problems of one task,
    form and level in the evaluation format, cycling through every (task,
    form, level) asked for. Induction problems show the whole copy. With
    `all_queries`, a variable assignment problem is followed by queries of all
    its other variables in random order ("So r is 6" after "So x is 7"), which
    gives more binding examples per token than one query. The random stream is
    seeded apart from `generate`, but a short problem can still coincide with
    an evaluation prompt by chance.
    """
    _check_positive(n_documents=n_documents, problems_per_document=problems_per_document)
    if tasks is None:
        tasks = list(TASKS)
    elif isinstance(tasks, str):
        tasks = [tasks]
    else:
        tasks = list(tasks)
    combos = []
    for task in tasks:
        check_task(task)
        for form in (forms or {}).get(task, TASKS[task]["forms"]):
            for level in (levels or {}).get(task, TASKS[task]["levels"]):
                check_task(task, form, level)
                combos.append((task, form, level))
    rng = random.Random(f"depthcurse-cooldown/{seed}")
    documents = []
    for index in range(n_documents):
        task, form, level = combos[index % len(combos)]
        texts = []
        for _ in range(problems_per_document):
            if task == "induction":
                problem = _induction_problem(rng, form, level, 1, solved=True)
            elif task == "arithmetic":
                problem = _arithmetic_problem(rng, level, max_operand)
            else:
                problem = _assignment_problem(
                    rng, form, level, n_distractors, max_value, exclude=set()
                )
            texts.append(problem.text + problem.answer + _extra_queries(rng, problem, form, all_queries))
        documents.append(_separator(task, form).join(texts))
    return documents


def _extra_queries(rng: random.Random, problem: _Problem, form: str, all_queries: bool) -> str:
    if not all_queries or "bindings" not in problem.meta:
        return ""
    bindings = problem.meta["bindings"]
    others = [name for name in bindings if name != problem.meta["target"]]
    rng.shuffle(others)
    if form == "text":
        return "".join(f". So {name} is {bindings[name]}" for name in others)
    return "".join(f"\nprint({name})  # prints {bindings[name]}" for name in others)
