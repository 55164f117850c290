"""Tests for held-out NLL, reasoning primitives, exact-match scoring and the cooldown mix."""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from depthcurse.config import preset
from depthcurse.evals import (
    TASKS,
    Instance,
    MixtureSampler,
    PrimitiveError,
    TokenizerError,
    answer_visibility_errors,
    encode_documents,
    evaluate,
    generate,
    generate_all,
    heldout_nll,
    instances_to_prompt_set,
    primitive_tokens,
    score_prompt_set,
    training_documents,
    wilson_interval,
)
from depthcurse.evals.nll import bootstrap_ratio, sequence_nll
from depthcurse.model import DepthcurseLM
from depthcurse.prompts import Prompt, PromptSet

ALL_COMBOS = [
    (task, form, level)
    for task, spec in TASKS.items()
    for form in spec["forms"]
    for level in spec["levels"]
]
WORDS = "the a of and to in is was he she it they we said came went saw king lord house city land".split()


def _bpe(texts: list[str], vocab_size: int = 400) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _plain_corpus(n_documents: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(WORDS, size=rng.integers(8, 20))).capitalize() + "."
        for _ in range(n_documents)
    ]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return _bpe(training_documents(120, seed=3) + _plain_corpus(200, seed=3))


class ZeroLogits(torch.nn.Module):
    """A uniform model: all-zero logits over `vocab_size` tokens."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, self.vocab_size)


class AnswerStub(torch.nn.Module):
    """Emits fixed answer tokens at the answer positions of known prompts, token 0 elsewhere."""

    def __init__(self, prompt_set: PromptSet, emitted: list[list[int]], vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.table = {
            tuple(p.token_ids): (p.labels["answer_start"], ids)
            for p, ids in zip(prompt_set.prompts, emitted, strict=True)
        }

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., 0] = 1.0
        for row, ids in enumerate(input_ids.tolist()):
            while ids and ids[-1] == 0:  # right padding with pad id 0
                ids.pop()
            start, emitted = self.table[tuple(ids)]
            for offset, token in enumerate(emitted):
                logits[row, start - 1 + offset, token] = 10.0
        return logits


# --- held-out NLL --------------------------------------------------------------------------------


def test_uniform_model_perplexity_is_vocab_size():
    tokens = torch.randint(0, 97, (12, 20))
    result = heldout_nll(ZeroLogits(97), tokens, n_bootstrap=200)
    # The log-softmax runs in float32, so log(97) carries float32 rounding (~1e-7 relative).
    assert result.perplexity == pytest.approx(97.0, rel=1e-6)
    assert result.nll == pytest.approx(math.log(97.0), rel=1e-6)
    assert result.n_tokens == 12 * 19
    assert result.n_sequences == 12


def test_zeroed_depthcurse_lm_is_uniform(small_config):
    model = DepthcurseLM(small_config.replace(tie_embeddings=False)).eval()
    torch.nn.init.zeros_(model.lm_head.weight)
    result = heldout_nll(model, torch.randint(0, 97, (4, 16)), n_bootstrap=50)
    assert result.perplexity == pytest.approx(small_config.vocab_size, rel=1e-5)


def test_nll_matches_hand_computed_cross_entropy(small_config):
    model = DepthcurseLM(small_config).eval()
    tokens = torch.randint(0, 97, (3, 10))
    with torch.no_grad():
        logits = model(tokens)
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 97), tokens[:, 1:].reshape(-1)
    ).item()
    result = heldout_nll(model, tokens, batch_size=2, n_bootstrap=50)
    # float32 logits summed in float64: agreement to float32 rounding.
    assert result.nll == pytest.approx(expected, rel=1e-5)


def test_nll_input_kinds_agree(small_config, tmp_path):
    from depthcurse.data import open_tokens, write_tokens

    model = DepthcurseLM(small_config).eval()
    flat = np.random.default_rng(0).integers(0, 97, size=161)
    windows = np.stack([flat[i * 16 : i * 16 + 17] for i in range(10)])
    write_tokens(tmp_path / "val.bin", flat, 97)

    from_rows = heldout_nll(model, torch.from_numpy(windows), n_bootstrap=50)
    from_flat = heldout_nll(model, flat, seq_len=16, n_bootstrap=50)
    from_store = heldout_nll(model, open_tokens(tmp_path / "val.bin"), seq_len=16, n_bootstrap=50)
    prompt_set = PromptSet("w", [Prompt(str(i), row.tolist()) for i, row in enumerate(windows)])
    from_prompts = heldout_nll(model, prompt_set, n_bootstrap=50)
    for other in (from_flat, from_store, from_prompts):
        assert other.nll == pytest.approx(from_rows.nll, rel=1e-6)
        assert other.n_tokens == from_rows.n_tokens


def test_padded_prompts_score_only_real_tokens(small_config):
    model = DepthcurseLM(small_config).eval()
    short, long = [5, 6, 7, 8], list(range(10, 22))
    together = sequence_nll(model, PromptSet("p", [Prompt("a", short), Prompt("b", long)]))
    alone = sequence_nll(model, PromptSet("p", [Prompt("a", short)]))
    assert together[1].tolist() == [3, 11]
    assert together[0][0] == pytest.approx(alone[0][0], rel=1e-5)


def test_bootstrap_interval_contains_point_and_narrows():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 2000):
        sums = rng.gamma(2.0, 1.0, size=n) * 10
        counts = np.full(n, 10)
        point, low, high = bootstrap_ratio(sums, counts, n_bootstrap=500, seed=0)
        assert low <= point <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # width shrinks like 1/sqrt(n): 10x narrower expected


def test_bootstrap_is_seeded(small_config):
    model = DepthcurseLM(small_config).eval()
    tokens = torch.randint(0, 97, (30, 12))
    first = heldout_nll(model, tokens, n_bootstrap=100, seed=4)
    again = heldout_nll(model, tokens, n_bootstrap=100, seed=4)
    assert (first.nll_low, first.nll_high) == (again.nll_low, again.nll_high)
    assert first.nll_low <= first.nll <= first.nll_high
    assert first.perplexity_low <= first.perplexity <= first.perplexity_high


def test_bridge_and_training_model_agree(small_config, tmp_path, tokenizer):
    import depthcurse
    from depthcurse.checkpoint import save_checkpoint

    config = small_config.replace(vocab_size=400, max_seq_len=256)
    model = DepthcurseLM(config).eval()
    save_checkpoint(tmp_path / "c", model)
    bridge = depthcurse.load(tmp_path / "c")
    tokens = torch.randint(0, 400, (6, 24))
    ours = heldout_nll(model, tokens, n_bootstrap=50)
    hooked = heldout_nll(bridge, tokens, n_bootstrap=50)
    # The bridge runs eager attention and our model SDPA: a few ulp apart in float32.
    assert hooked.nll == pytest.approx(ours.nll, abs=1e-5)
    prompt_set = instances_to_prompt_set(generate_all(n_per_level=2, seed=0, shots=1), tokenizer)
    assert score_prompt_set(bridge, prompt_set) == score_prompt_set(model, prompt_set)


def test_checkpoint_folder_scores_as_hf_model(small_config, tmp_path, tokenizer):
    """Load the folder the way lm-eval's `hf` model type does and compare with our model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from depthcurse.checkpoint import save_checkpoint

    tokenizer.save(str(tmp_path / "tokenizer.json"))
    model = DepthcurseLM(small_config.replace(vocab_size=400, max_seq_len=256)).eval()
    save_checkpoint(tmp_path / "c", model, tokenizer_file=tmp_path / "tokenizer.json")
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "c", local_files_only=True).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "c", local_files_only=True)
    ours = evaluate(model, tokenizer, ["arithmetic"], n_per_level=4, seed=0, shots=1)
    theirs = evaluate(hf_model, hf_tokenizer, ["arithmetic"], n_per_level=4, seed=0, shots=1)
    assert theirs.equals(ours)
    text = training_documents(1, seed=0, tasks=["arithmetic"])[0]
    assert hf_tokenizer.encode(text, add_special_tokens=False) == tokenizer.encode(text).ids


def test_nll_rejects_bad_tokens():
    with pytest.raises(ValueError, match="seq_len"):
        heldout_nll(ZeroLogits(5), np.arange(5))
    with pytest.raises(ValueError, match="too few"):
        heldout_nll(ZeroLogits(50), np.arange(5), seq_len=8)
    with pytest.raises(TypeError, match="integers"):
        heldout_nll(ZeroLogits(5), np.zeros((2, 4), dtype=np.float32))


# --- generators ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "form", "level"), ALL_COMBOS)
def test_generator_is_deterministic(task, form, level):
    first = generate(task, level, 20, seed=11, form=form)
    again = generate(task, level, 20, seed=11, form=form)
    other = generate(task, level, 20, seed=12, form=form)
    assert [i.to_dict() for i in first] == [i.to_dict() for i in again]
    assert [i.prompt for i in first] != [i.prompt for i in other]
    for instance in first:
        assert (instance.task, instance.form, instance.level) == (task, form, level)
        assert instance.prompt.endswith(instance.query)
        assert instance.answer.startswith(" ")


@pytest.mark.parametrize(("task", "form", "level"), ALL_COMBOS)
def test_answer_visibility_rule_holds(task, form, level):
    for instance in generate(task, level, 300, seed=5, form=form, shots=3):
        assert answer_visibility_errors(instance) == [], instance.prompt


@pytest.mark.parametrize("form", ["text", "code"])
@pytest.mark.parametrize("depth", [1, 2])
def test_deep_assignment_value_only_at_root(form, depth):
    for instance in generate("variable_assignment", depth, 200, seed=8, form=form):
        value = instance.answer.strip()
        target = instance.meta["target"]
        hits = [m.start() for m in re.finditer(rf"(?<![0-9]){value}(?![0-9])", instance.prompt)]
        assert hits == [instance.meta["root_offset"]]
        # The queried variable is assigned another variable, never a literal.
        own = re.findall(rf"(?:^|\n|\. )(?:Let |let )?{target}(?: be | = )(\w+)", instance.query)
        assert len(own) == 1
        assert not own[0].isdigit()


def test_visibility_check_catches_leaks():
    instance = generate("variable_assignment", 1, 1, seed=0, form="code")[0]
    value = instance.answer.strip()
    leaked = Instance(**{**instance.__dict__, "prompt": f"w = {value}\n" + instance.prompt})
    assert answer_visibility_errors(leaked)  # a distractor with the answer value
    sum_instance = generate("arithmetic", 1, 1, seed=0)[0]
    leaked_sum = Instance(**{**sum_instance.__dict__, "prompt": sum_instance.answer.strip() + " + 0 =\n"})
    assert answer_visibility_errors(leaked_sum)


def test_arithmetic_answers_are_correct():
    for level in (1, 2, 3):
        for instance in generate("arithmetic", level, 100, seed=2, max_operand=30):
            expression = instance.query.removesuffix(" =")
            assert len(re.findall(r"[+-]", expression)) == level
            assert eval(expression) == int(instance.answer)  # noqa: S307 - digits and +/- only


def test_induction_answer_continues_the_copy():
    for instance in generate("induction", 2, 50, seed=1, form="symbols", answer_items=2):
        sequence = instance.query.split(". Again:")[0].removeprefix("Copy: ").split()
        copied = instance.query.split(". Again:")[1].split()
        assert copied == sequence[: len(copied)]
        assert instance.answer.split() == sequence[len(copied) : len(copied) + 2]


def test_generate_all_takes_one_task_name():
    instances = generate_all("arithmetic", n_per_level=2, seed=0)
    assert {i.task for i in instances} == {"arithmetic"}
    assert len(instances) == 6


def test_levels_keep_their_instances_when_others_are_added():
    alone = generate_all(["arithmetic"], levels={"arithmetic": [2]}, n_per_level=5, seed=1)
    mixed = generate_all(["arithmetic"], n_per_level=5, seed=1)
    assert [i.prompt for i in alone] == [i.prompt for i in mixed if i.level == 2]


def test_training_documents_are_solved_problems():
    documents = training_documents(6, seed=1, tasks=["variable_assignment", "arithmetic"])
    assert documents == training_documents(6, seed=1, tasks=["variable_assignment", "arithmetic"])
    sums = [d for d in documents if "print(" not in d and "Let" not in d]
    for line in "\n".join(sums).splitlines():
        expression, result = line.split(" = ")
        assert eval(expression) == int(result)  # noqa: S307


# --- scoring -------------------------------------------------------------------------------------


def _wrong_digit(answer: str) -> str:
    digit = answer[-1]
    return answer[:-1] + str((int(digit) + 1) % 10)


def test_stub_with_right_tokens_scores_one(tokenizer):
    instances = generate_all(n_per_level=8, seed=2, shots=2)
    prompt_set = instances_to_prompt_set(instances, tokenizer)
    stub = AnswerStub(prompt_set, [p.labels["answer_ids"] for p in prompt_set.prompts], 400)
    correct = score_prompt_set(stub, prompt_set, batch_size=5)
    assert len(correct) == len(instances)
    assert all(correct)


def test_stub_with_wrong_digit_scores_zero(tokenizer):
    instances = generate_all(["variable_assignment", "arithmetic"], n_per_level=8, seed=2)
    prompt_set = instances_to_prompt_set(instances, tokenizer)
    emitted = []
    for prompt in prompt_set.prompts:
        right = prompt.labels["answer_ids"]
        wrong = tokenizer.encode(_wrong_digit(prompt.labels["answer"])).ids
        wrong = (wrong + [0] * len(right))[: len(right)]
        assert wrong != right
        emitted.append(wrong)
    stub = AnswerStub(prompt_set, emitted, 400)
    assert not any(score_prompt_set(stub, prompt_set, batch_size=7))


def test_evaluate_table_for_oracle(tokenizer, monkeypatch):
    import depthcurse.evals.harness as harness

    built = {}
    original = harness.instances_to_prompt_set

    def keep(instances, tok, name="primitives"):
        built["set"] = original(instances, tok, name)
        return built["set"]

    monkeypatch.setattr(harness, "instances_to_prompt_set", keep)

    class Oracle(torch.nn.Module):
        def forward(self, input_ids):
            prompt_set = built["set"]
            stub = AnswerStub(prompt_set, [p.labels["answer_ids"] for p in prompt_set.prompts], 400)
            return stub(input_ids)

    table, prompt_set = evaluate(
        Oracle(), tokenizer, ["variable_assignment"], n_per_level=6, seed=1, return_prompts=True
    )
    assert list(table.columns) == [
        "task", "form", "level", "accuracy", "ci_low", "ci_high", "n", "chance", "chance_in_prompt",
        "shots",
    ]
    assert (table["shots"] == 3).all(), "a model without a context length gets the default shots"
    assert len(table) == 6  # 2 forms x 3 depths
    assert (table["accuracy"] == 1.0).all()
    assert (table["n"] == 6).all()
    assert table["chance"].tolist() == pytest.approx([0.1] * 6)
    assert table["chance_in_prompt"].tolist() == pytest.approx([1 / 3] * 6)
    assert (table["ci_low"] < 1.0).all()
    assert all(p.labels["correct"] for p in prompt_set.prompts)
    assert {p.labels["level"] for p in prompt_set.select(form="code").prompts} == {0, 1, 2}


def test_prompt_set_labels_locate_the_answer(tokenizer):
    instances = generate_all(n_per_level=3, seed=9)
    prompt_set = instances_to_prompt_set(instances, tokenizer)
    for prompt, instance in zip(prompt_set.prompts, instances, strict=True):
        start = prompt.labels["answer_start"]
        assert tokenizer.decode(prompt.token_ids[start:]) == instance.answer
        assert tokenizer.decode(prompt.token_ids[:start]) == instance.prompt
        assert prompt.labels["answer"] == instance.answer


def test_wilson_interval_values():
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-4)  # published value for 0/10 at 95%
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)


# --- bad input -----------------------------------------------------------------------------------


def test_unknown_task_is_named():
    with pytest.raises(PrimitiveError, match="'logic'"):
        generate("logic", 1, 3)
    with pytest.raises(PrimitiveError, match="'logic'"):
        generate_all(["logic"])


def test_level_outside_range_is_named():
    with pytest.raises(PrimitiveError, match="level 3 .*variable_assignment.*0, 1, 2"):
        generate("variable_assignment", 3, 3)
    with pytest.raises(PrimitiveError, match="level 0"):
        generate("arithmetic", 0, 3)
    with pytest.raises(PrimitiveError, match="'prose'"):
        generate("variable_assignment", 1, 3, form="prose")


def test_bad_generator_settings_are_named():
    with pytest.raises(PrimitiveError, match="max_value=2"):
        generate("variable_assignment", 0, 3, max_value=2, n_distractors=3)
    with pytest.raises(PrimitiveError, match="shots"):
        generate("arithmetic", 1, 3, shots=-1)


def test_tokenizer_without_digits_is_rejected():
    letters = {c: i + 1 for i, c in enumerate("abcdefghijklmnopqrstuvwxyzLS.=?")}
    vocab = {"[UNK]": 0, **letters}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    instances = generate("variable_assignment", 0, 2, seed=0)
    with pytest.raises(TokenizerError, match=r"'\d'.*variable_assignment"):
        instances_to_prompt_set(instances, word_level)


# --- cooldown mix --------------------------------------------------------------------------------


class WindowSampler:
    """The interface of depthcurse.data.BatchSampler over a numpy token array."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int) -> None:
        self.tokens, self.batch_size, self.seq_len, self.seed = tokens, batch_size, seq_len, seed
        self.batches_drawn = 0

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)
        rows = torch.from_numpy(self.tokens[starts[:, None] + np.arange(self.seq_len + 1)])
        return rows[:, :-1], rows[:, 1:]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.batches_drawn += 1
        return self.batch(self.batches_drawn - 1)

    def state_dict(self) -> dict[str, int]:
        return {"batches_drawn": self.batches_drawn, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches_drawn, self.seed = state["batches_drawn"], state["seed"]


def _mixture(weight: float, seed: int = 0, batch_size: int = 10) -> MixtureSampler:
    corpus = np.arange(1000, 5000, dtype=np.int64)  # ids >= 1000 mark corpus tokens
    generated = np.arange(0, 900, dtype=np.int64)
    base = WindowSampler(corpus, batch_size, 16, seed)
    weights = {"corpus": 1 - weight, "primitives": weight}
    return MixtureSampler(base, {"primitives": generated}, weights)


def test_mixture_rows_follow_weights():
    sampler = _mixture(0.3, batch_size=10)
    for index in range(20):
        x, y = sampler.batch(index)
        from_generated = int((x[:, 0] < 1000).sum())
        assert from_generated == 3  # systematic sampling: exactly 0.3 * 10 rows
        assert torch.equal(x[:, 1:], y[:, :-1])
    odd = _mixture(0.25, batch_size=10)
    counts = {int((odd.batch(i)[0][:, 0] < 1000).sum()) for i in range(50)}
    assert counts == {2, 3}


def test_mixture_is_deterministic_and_resumes():
    first = _mixture(0.5, seed=3)
    batches = [first.next_batch() for _ in range(5)]
    state = copy.deepcopy(first.state_dict())
    later = first.next_batch()
    resumed = _mixture(0.5, seed=3)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.next_batch()[0], later[0])
    fresh = _mixture(0.5, seed=3)
    assert all(torch.equal(fresh.batch(i)[0], b[0]) for i, b in enumerate(batches))
    assert not torch.equal(_mixture(0.5, seed=4).batch(0)[0], batches[0][0])


def test_mixture_keeps_base_rows_and_counter():
    base_only = _mixture(0.0)
    base = WindowSampler(np.arange(1000, 5000, dtype=np.int64), 10, 16, 0)
    assert torch.equal(base_only.batch(7)[0], base.batch(7)[0])
    base.batches_drawn = 40  # a trainer switching to the mixture at step 40
    mixture = MixtureSampler(base, {"g": np.arange(900)}, {"corpus": 0.5, "g": 0.5})
    mixture.next_batch()
    assert mixture.batches_drawn == 41
    assert base.batches_drawn == 41


def test_mixture_ranks_split_the_global_batch():
    from depthcurse.data import BatchSampler, TokenStore

    corpus = TokenStore(Path("corpus.bin"), np.arange(1000, 5000, dtype=np.int64), 5000)
    generated = np.arange(0, 900, dtype=np.int64)
    weights = {"corpus": 0.5, "primitives": 0.5}

    def mixture(rank: int, world_size: int, batch_size: int) -> MixtureSampler:
        base = BatchSampler(corpus, batch_size, 16, seed=2, rank=rank, world_size=world_size)
        return MixtureSampler(base, {"primitives": generated}, weights)

    single = mixture(0, 1, 8).batch(3)[0]
    halves = [mixture(rank, 2, 4).batch(3)[0] for rank in (0, 1)]
    assert torch.equal(torch.cat(halves), single)


def test_mixture_describe_and_bad_weights():
    sampler = _mixture(0.2)
    record = sampler.describe()
    assert record["weights"] == pytest.approx({"corpus": 0.8, "primitives": 0.2})
    assert record["tokens"]["primitives"] == 900
    base = WindowSampler(np.arange(1000, 5000), 4, 16, 0)
    with pytest.raises(ValueError, match="weights name"):
        MixtureSampler(base, {"g": np.arange(900)}, {"corpus": 1.0})
    with pytest.raises(ValueError, match="'g'.*-1"):
        MixtureSampler(base, {"g": np.arange(900)}, {"corpus": 1.0, "g": -1.0})
    with pytest.raises(ValueError, match="'g' has 5 tokens"):
        MixtureSampler(base, {"g": np.arange(5)}, {"corpus": 1.0, "g": 1.0})
    with pytest.raises(ValueError, match="resume with the same"):
        sampler.load_state_dict({**sampler.state_dict(), "weights": {"corpus": 0.5, "primitives": 0.5}})


def test_primitive_tokens_are_separated_documents(tokenizer):
    tokens = primitive_tokens(tokenizer, 0, 10, seed=1, tasks=["arithmetic"])
    documents = training_documents(10, seed=1, tasks=["arithmetic"])
    assert int((tokens == 0).sum()) == 10
    assert tokenizer.decode(tokens[1 : int(np.flatnonzero(tokens == 0)[1])].tolist()) == documents[0]
    assert np.array_equal(tokens, encode_documents(documents, tokenizer, 0))


# --- end to end: a small model learns from the cooldown mix -------------------------------------


def _train(model, sampler, steps: int, optimizer_state=None, lr: float = 3e-3) -> dict:
    """Train with AdamW (50 warm-up steps); pass the returned optimizer state on to continue."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    done = optimizer.state_dict()["state"].get(0, {}).get("step", 0)
    model.train()
    for step in range(int(done), int(done) + steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50)
        x, y = next(sampler)
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return copy.deepcopy(optimizer.state_dict())


@pytest.mark.slow
def test_cooldown_mix_teaches_depth_zero_assignment(capsys, tmp_path):
    """A 2-layer tiny-shaped model: shared pretraining, then a cooldown with or without the mix."""
    from depthcurse.data import BatchSampler, open_tokens, write_tokens

    seed = int(os.environ.get("DEPTHCURSE_TEST_SEED", "0"))
    torch.manual_seed(seed)
    only_depth_zero = {
        "tasks": ["variable_assignment"],
        "levels": {"variable_assignment": [0]},
    }
    documents = training_documents(1500, seed=seed + 100, problems_per_document=4, **only_depth_zero)
    corpus_text = _plain_corpus(3000, seed)
    tokenizer = _bpe(corpus_text[:500] + documents[:200], vocab_size=384)
    write_tokens(tmp_path / "train.bin", encode_documents(corpus_text, tokenizer, 0), 384)
    corpus = open_tokens(tmp_path / "train.bin")
    generated = encode_documents(documents, tokenizer, 0)
    # Width 64 instead of tiny's 128, 2 layers: the smallest depth with an induction-style
    # lookup. init_std 0.1 (tiny uses 0.02) lets attention specialise within a few hundred steps.
    config = preset(
        "tiny", vocab_size=384, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, d_mlp=192,
        max_seq_len=64, init_std=0.1,
    )
    pretrained = DepthcurseLM(config)
    pretrained_state = _train(pretrained, BatchSampler(corpus, 16, 64, seed), 100)

    steps = 1200
    with_mix = copy.deepcopy(pretrained)
    base = BatchSampler(corpus, 16, 64, seed)
    base.batches_drawn = 100
    mixture = MixtureSampler(base, {"primitives": generated}, {"corpus": 0.2, "primitives": 0.8})
    _train(with_mix, mixture, steps, pretrained_state)
    without_mix = copy.deepcopy(pretrained)
    plain = BatchSampler(corpus, 16, 64, seed)
    plain.batches_drawn = 100
    _train(without_mix, plain, steps, pretrained_state)

    def depth_zero_accuracy(model):
        table = evaluate(
            model, tokenizer, "variable_assignment", levels={"variable_assignment": [0]},
            n_per_level=150, seed=seed + 7, shots=0,
        )
        hits = int(round((table["accuracy"] * table["n"]).sum()))
        return table, hits, int(table["n"].sum())

    mixed_table, mixed_hits, n = depth_zero_accuracy(with_mix)
    plain_table, plain_hits, _ = depth_zero_accuracy(without_mix)
    chance = float(mixed_table["chance"].mean())
    low, high = wilson_interval(mixed_hits, n)
    with capsys.disabled():
        print(
            f"\ndepth-0 variable assignment, n={n}: chance {chance:.3f} "
            f"(guess among shown values {mixed_table['chance_in_prompt'].mean():.3f}); "
            f"with cooldown mix {mixed_hits / n:.3f} [{low:.3f}, {high:.3f}]; "
            f"without {plain_hits / n:.3f}"
        )
    # NOTE: at this budget the model learns to answer with a value from the prompt (0.21 to 0.34
    # over seeds 0-2), not yet which value is bound to the queried variable: it does not exceed
    # chance_in_prompt (1/3). Binding appeared after about 2,700 steps in longer runs.
    assert low > chance  # the Wilson interval lies above a uniform guess over 0..9
    assert plain_hits < mixed_hits


# --- the trainer's cooldown option ---------------------------------------------------------------


def test_trainer_cooldown_records_mix_and_resumes(tmp_path, tokenizer):
    import json
    import shutil

    from safetensors.torch import load_file

    from depthcurse.checkpoint import read_metadata
    from depthcurse.data import write_tokens
    from depthcurse.train import TrainConfig, train

    data = tmp_path / "data"
    data.mkdir()
    tokenizer.save(str(data / "tokenizer.json"))
    text = " ".join(_plain_corpus(400, seed=0))
    write_tokens(data / "train.bin", np.array(tokenizer.encode(text).ids), 400)
    write_tokens(data / "val.bin", np.array(tokenizer.encode(text[:3000]).ids), 400)
    model = {"vocab_size": 400, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
             "d_mlp": 64, "max_seq_len": 32}
    config = TrainConfig(
        model=model, data_dir=str(data), batch_size=4, max_steps=10, warmup_steps=2,
        eval_interval=10, eval_batches=2, checkpoint_interval=4, log_interval=5, progress=False,
        deterministic=True, cooldown_fraction=0.4, cooldown_weight=0.5, cooldown_documents=50,
    )
    assert config.cooldown_start() == 6
    out = tmp_path / "run"
    train(config, out)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    cooldown = [r for r in records if r["kind"] == "cooldown"]
    assert len(cooldown) == 1
    assert cooldown[0]["step"] == 6
    assert cooldown[0]["weights"] == {"corpus": 0.5, "primitives": 0.5}
    assert "data_mix" not in read_metadata(out / "checkpoints" / "step-000004")
    mix = read_metadata(out / "checkpoints" / "step-000008")["data_mix"]
    assert mix["weights"] == {"corpus": 0.5, "primitives": 0.5}

    final = out / "checkpoints" / "step-000010"
    whole = load_file(final / "model.safetensors")
    shutil.rmtree(final)
    train(config, out, resume=True)  # resumes inside the cooldown, from step 8
    again = load_file(final / "model.safetensors")
    for name in whole:
        assert torch.equal(whole[name], again[name]), name


def test_trainer_rejects_bad_cooldown():
    from depthcurse.config import ConfigError
    from depthcurse.train import TrainConfig

    with pytest.raises(ConfigError, match="cooldown_fraction.*1.5"):
        TrainConfig(cooldown_fraction=1.5)
    with pytest.raises(ConfigError, match="cooldown_documents.*0"):
        TrainConfig(cooldown_documents=0)
    assert TrainConfig().cooldown_start() is None


def test_evaluate_command_writes_table(small_config, tmp_path, tokenizer):
    from typer.testing import CliRunner

    from depthcurse.checkpoint import save_checkpoint
    from depthcurse.cli import app

    tokenizer.save(str(tmp_path / "tokenizer.json"))
    model = DepthcurseLM(small_config.replace(vocab_size=400, max_seq_len=256))
    save_checkpoint(tmp_path / "c", model, tokenizer_file=tmp_path / "tokenizer.json")
    args = ["evaluate", str(tmp_path / "c"), "--tasks", "arithmetic", "--n-per-level", "3"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "t.csv")])
    assert result.exit_code == 0, result.output
    assert "chance_in_prompt" in result.output
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 4  # header + 3 levels
    bad = CliRunner().invoke(app, ["evaluate", str(tmp_path / "c"), "--tasks", "logic"])
    assert bad.exit_code != 0
    assert "'logic'" in bad.output


def test_evaluate_command_run_folder_and_long_prompts(small_config, tmp_path, tokenizer):
    from typer.testing import CliRunner

    from depthcurse.checkpoint import save_checkpoint
    from depthcurse.cli import app

    tokenizer.save(str(tmp_path / "tokenizer.json"))
    model = DepthcurseLM(small_config.replace(vocab_size=400, max_seq_len=256))
    run = tmp_path / "run"
    save_checkpoint(
        run / "checkpoints" / "step-000010", model, tokenizer_file=tmp_path / "tokenizer.json",
        metadata={"step": 10},
    )
    args = ["evaluate", str(run), "--tasks", "arithmetic", "--n-per-level", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "step-000010" in result.output

    missing = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    assert "does not exist" in " ".join(missing.output.replace("│", " ").split())

    # Many shots make prompts longer than the model's 256 positions; the error
    # names the task, the level and the options that shorten them.
    long = CliRunner().invoke(app, [*args, "--shots", "60"])
    assert long.exit_code == 2
    text = " ".join(long.output.replace("│", " ").split())
    assert "(arithmetic, level" in text
    assert "--shots" in text
    assert "--tasks" in text


# --- fitting prompts to the model's context ------------------------------------------------------


def _longest_by_level(instances, tokenizer) -> dict[tuple[str, str, int], int]:
    from depthcurse.evals.context import sequence_length

    longest: dict[tuple[str, str, int], int] = {}
    for instance in instances:
        key = (instance.task, instance.form, instance.level)
        longest[key] = max(longest.get(key, 0), sequence_length(instance, tokenizer))
    return longest


def test_fit_to_context_takes_most_shots(tokenizer):
    from depthcurse.evals.context import fit_to_context

    context = 100
    fit = fit_to_context(tokenizer, context, n_per_level=3, seed=0)
    longest_by_level = _longest_by_level(fit.instances, tokenizer)
    assert max(longest_by_level.values()) <= context
    for task, shots in fit.shots.items():
        combos = [key for key in longest_by_level if key[0] == task]
        assert {i.shots for i in fit.instances if i.task == task} == {shots}
        # The instances are the generator's own for that number of shots.
        same = generate_all([task], n_per_level=3, seed=0, shots=shots)
        assert [i.prompt for i in fit.instances if i.task == task] == [
            i.prompt for i in same if (i.task, i.form, i.level) in combos
        ]
        if shots < 3:
            one_more = [
                i for _, form, level in combos
                for i in generate(task, level, 3, seed=0, form=form, shots=shots + 1)
            ]
            assert max(_longest_by_level(one_more, tokenizer).values()) > context
    # With this tokenizer: arithmetic fits 3 shots, variable assignment only 1.
    assert fit.shots["arithmetic"] == 3
    assert fit.shots["variable_assignment"] == 1
    assert any(note.startswith("variable_assignment: 1 shot instead of 3") for note in fit.notes)
    assert not any(note.startswith("arithmetic") for note in fit.notes)


def test_fit_to_context_leaves_out_levels(tokenizer):
    from depthcurse.evals.context import fit_to_context

    # Induction words level 3 needs more than 100 tokens even without shots.
    fit = fit_to_context(tokenizer, 100, ["induction"], n_per_level=3, seed=0)
    longest_by_level = _longest_by_level(fit.instances, tokenizer)
    assert ("induction", "words", 3) not in longest_by_level
    assert ("induction", "symbols", 3) in longest_by_level
    left_out = [note for note in fit.notes if "left out" in note]
    assert len(left_out) == 1
    assert left_out[0].startswith("induction (words, level 3) left out: even with 0 shots")
    with pytest.raises(ValueError, match="no task, form and level fits the model's 5 positions"):
        fit_to_context(tokenizer, 5, n_per_level=3)
    with pytest.raises(PrimitiveError, match="max_shots"):
        fit_to_context(tokenizer, 100, max_shots=-1)


def test_evaluate_default_shots_fit_context(tokenizer):
    model = DepthcurseLM(preset("tiny").replace(vocab_size=400, max_seq_len=100, n_layers=2)).eval()
    table, prompt_set = evaluate(
        model, tokenizer, ["arithmetic", "variable_assignment"], n_per_level=3, return_prompts=True
    )
    assert max(len(p.token_ids) for p in prompt_set.prompts) <= 100
    shots = table.groupby("task")["shots"].unique().to_dict()
    assert list(shots["arithmetic"]) == [3]
    assert list(shots["variable_assignment"]) == [1]
    assert table.attrs["shots"] is None
    assert table.attrs["notes"][0].startswith("variable_assignment: 1 shot instead of 3")
    # An explicit number of shots is used as given, so too long prompts raise.
    with pytest.raises(ValueError, match=r"max_seq_len is 100\. Use fewer shots \(now 3"):
        evaluate(model, tokenizer, ["variable_assignment"], n_per_level=3, shots=3)
    exact = evaluate(model, tokenizer, ["variable_assignment"], n_per_level=3, shots=1)
    assert (exact["shots"] == 1).all()
    assert exact.attrs["notes"] == []


def test_evaluate_command_default_shots(tmp_path, tokenizer):
    from typer.testing import CliRunner

    from depthcurse.checkpoint import save_checkpoint
    from depthcurse.cli import app

    tokenizer.save(str(tmp_path / "tokenizer.json"))
    model = DepthcurseLM(preset("tiny").replace(vocab_size=400, n_layers=2))
    save_checkpoint(tmp_path / "c", model, tokenizer_file=tmp_path / "tokenizer.json")
    args = ["evaluate", str(tmp_path / "c"), "--tasks", "induction,arithmetic", "--n-per-level", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # The tiny preset has 256 positions: 3-shot induction prompts reach 529 tokens here.
    assert "note: induction: 1 shot instead of 3, the most that fit the model's 256 positions" in result.output
    assert "shots" in result.output.splitlines()[1]
    explicit = CliRunner().invoke(app, [*args, "--shots", "3"])
    assert explicit.exit_code == 2
    text = " ".join(explicit.output.replace("│", " ").split())
    assert "(induction, level 3)" in text
    assert "--shots" in text
