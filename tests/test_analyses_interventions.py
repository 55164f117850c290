"""Intervention analyses: skip effects, depth score, surgery, pruning, looping, maps, plots."""

import matplotlib

matplotlib.use("Agg")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import depthcurse  # noqa: E402
from depthcurse.analyses.depth_score import (  # noqa: E402
    depth_score,
    depth_score_from_table,
    depth_score_of_matrix,
    depth_score_of_vector,
)
from depthcurse.analyses.engine import (  # noqa: E402
    LayerStack,
    clean_run,
    next_token_nll,
    residual_nll,
)
from depthcurse.analyses.linear_map import fit_linear_maps, linear_map  # noqa: E402
from depthcurse.analyses.looping import loop_block, looped  # noqa: E402
from depthcurse.analyses.periodicity import (  # noqa: E402
    autocorrelation,
    dominant_period,
    periodicity,
    relative_contributions,
)
from depthcurse.analyses.perturbations import (  # noqa: E402
    block_size_of,
    compare_logits,
    perturbation_orders,
    perturbations,
)
from depthcurse.analyses.pruning import pruning_metrics  # noqa: E402
from depthcurse.analyses.skip_effects import (  # noqa: E402
    CleanProbabilities,
    skip_effect_arrays,
    skip_effect_arrays_by_part,
    skip_effects,
)
from depthcurse.analyses.surgery import layer_order, skipped  # noqa: E402
from depthcurse.analyses.symmetry import mirror_asymmetry, symmetry_scores  # noqa: E402
from depthcurse.checkpoint import save_checkpoint  # noqa: E402
from depthcurse.config import ModelConfig  # noqa: E402
from depthcurse.model import DepthcurseLM  # noqa: E402
from depthcurse.plots import interventions as plots  # noqa: E402
from depthcurse.prompts import Prompt, PromptSet  # noqa: E402

ZERO_LAYER = 2
N_LAYERS = 8
BLOCK = 2
# The prefix engine stacks runs along the batch, so its matmuls have other shapes than
# the naive engine's and may round differently. The effects are O(1) in float32.
ENGINE_ATOL = 1e-5


def _config(n_layers: int, d_model: int = 32) -> ModelConfig:
    return ModelConfig(
        vocab_size=97, d_model=d_model, n_layers=n_layers, n_heads=4, n_kv_heads=2,
        d_mlp=48, max_seq_len=40,
    )


def _growth_history(final_depth: int, width: int) -> list[dict]:
    return [
        {"depth_before": depth, "depth_after": depth + width}
        for depth in range(width, final_depth, width)
    ]


@pytest.fixture(scope="session")
def bridge(tmp_path_factory):
    """An 8-layer random model grown in blocks of 2, with layer 2's output planted at zero."""
    torch.manual_seed(1)
    model = DepthcurseLM(_config(N_LAYERS)).eval()
    with torch.no_grad():
        model.blocks[ZERO_LAYER].attn.o_proj.weight.zero_()
        model.blocks[ZERO_LAYER].mlp.down_proj.weight.zero_()
    path = tmp_path_factory.mktemp("ckpt") / "zero-layer"
    save_checkpoint(path, model, metadata={"growth_history": _growth_history(N_LAYERS, BLOCK)})
    return depthcurse.load(path)


@pytest.fixture(scope="session")
def other_bridge(tmp_path_factory):
    """A shallower, wider random model for cross-model maps."""
    torch.manual_seed(2)
    model = DepthcurseLM(_config(4, d_model=48)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "other"
    save_checkpoint(path, model)
    return depthcurse.load(path)


@pytest.fixture(scope="session")
def prompts():
    generator = torch.Generator().manual_seed(3)
    lengths = [30, 26, 22, 30]
    return PromptSet(
        "random",
        [
            Prompt(f"p{i}", torch.randint(0, 97, (n,), generator=generator).tolist(), {"level": i % 2})
            for i, n in enumerate(lengths)
        ],
    )


def _batch(prompts):
    (_, tokens, mask), = prompts.batches(len(prompts))
    return tokens, mask


def _logits(bridge, prompts):
    tokens, mask = _batch(prompts)
    with torch.no_grad():
        return bridge(tokens, attention_mask=mask)


# --- skip effects -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["current", "future"])
@pytest.mark.parametrize("part", ["layer", "attn", "mlp"])
def test_zero_layer_has_no_skip_effect(bridge, prompts, mode, part):
    table = skip_effects(bridge, prompts, parts=part, mode=mode)
    effect = table[table["metric"] == "relative_change"]
    output = table[table["metric"] == "output_change"]
    row = effect[effect["skip_layer"] == ZERO_LAYER]
    column = effect[effect["layer"] == ZERO_LAYER]
    assert len(row) == 2 * (N_LAYERS - 1 - ZERO_LAYER)  # both statistics, every j > s
    assert row["value"].abs().max() <= ENGINE_ATOL
    assert column["value"].abs().max() <= ENGINE_ATOL
    assert output.loc[output["skip_layer"] == ZERO_LAYER, "value"].abs().max() <= 1e-6
    others = effect[(effect["skip_layer"] != ZERO_LAYER) & (effect["layer"] != ZERO_LAYER)]
    assert others["value"].max() > 1e-3  # the other layers do matter


def test_skip_table_columns(bridge, prompts):
    table = skip_effects(bridge, prompts, parts=("layer", "mlp"), reduction="mean")
    for column in ("model", "prompt_set", "part", "mode", "reduction", "exclude_pos0", "note"):
        assert column in table.columns
    assert set(table["statistic"]) == {"max", "mean"}
    assert set(table["part"]) == {"layer", "mlp"}
    assert (table.loc[table["metric"] == "relative_change", "layer"]
            > table.loc[table["metric"] == "relative_change", "skip_layer"]).all()


def test_skipping_nothing_reproduces_clean(bridge, prompts):
    tokens, mask = _batch(prompts)
    reference = _logits(bridge, prompts)
    nothing = torch.zeros_like(mask, dtype=torch.bool)
    for part in ("layer", "attn", "mlp"):
        with skipped(bridge, 4, part, nothing), torch.no_grad():
            logits = bridge(tokens, attention_mask=mask)
        assert torch.equal(logits, reference)


def test_layer_stack_matches_bridge_bitwise(bridge, prompts):
    tokens, mask = _batch(prompts)
    # With the bridge's eager attention, the engine calls the bridge's own attention and
    # MLP modules in the same order, so the logits are the same bit for bit.
    eager = LayerStack(bridge, tokens, mask, attention_implementation="eager")
    assert torch.equal(clean_run(eager).logits, _logits(bridge, prompts))


def test_layer_stack_fused_attention_matches_bridge(bridge, prompts):
    tokens, mask = _batch(prompts)
    config = bridge.original_model.config
    assert config._attn_implementation == "eager"
    stack = LayerStack(bridge, tokens, mask)
    assert stack.attention_implementation == "sdpa"
    logits = clean_run(stack).logits
    # The engine switches attention only inside its own calls.
    assert config._attn_implementation == "eager"
    reference = _logits(bridge, prompts)
    assert not torch.equal(logits, reference)  # the fused kernel ran: its rounding differs
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("mode", ["current", "future"])
@pytest.mark.parametrize("part", ["layer", "attn", "mlp"])
def test_prefix_engine_matches_naive(bridge, prompts, part, mode, local):
    options = dict(part=part, mode=mode, local=local, batch_size=2, n_positions=2)
    fast = skip_effect_arrays(bridge, prompts, engine="prefix", max_rows=6, **options)
    naive = skip_effect_arrays(bridge, prompts, engine="naive", **options)
    np.testing.assert_array_equal(np.isnan(fast.effect), np.isnan(naive.effect))
    np.testing.assert_allclose(fast.effect, naive.effect, atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(fast.output, naive.output, atol=ENGINE_ATOL, rtol=0)
    if not local and part != "attn":
        # Σ_s (L − 1 − s) = L(L − 1)/2 layer runs after the clean run, against L·L.
        assert fast.layer_forwards / naive.layer_forwards <= 0.55


def test_local_equals_skip_next_layer(bridge, prompts):
    full = skip_effect_arrays(bridge, prompts, mode="future")
    local = skip_effect_arrays(bridge, prompts, mode="future", local=True)
    layers = np.arange(N_LAYERS - 1)
    # Layer s + 1 reads h_{s+1} − Δ_s = h_s in both variants, so its change is the same.
    np.testing.assert_allclose(
        local.effect[:, layers, layers + 1], full.effect[:, layers, layers + 1], atol=ENGINE_ATOL
    )
    # Further on, the local variant stops propagation, so the matrices must differ.
    assert np.nanmax(np.abs(local.effect - full.effect)) > 1e-3


def test_batched_equals_one_by_one(bridge, prompts):
    batched = skip_effect_arrays(bridge, prompts, mode="future", batch_size=4)
    single = skip_effect_arrays(bridge, prompts, mode="future", batch_size=1)
    np.testing.assert_allclose(batched.effect, single.effect, atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(batched.output, single.output, atol=ENGINE_ATOL, rtol=0)


def test_engine_records_no_autograd_graph(bridge, prompts):
    # In grad mode, softmax rows built from graph-carrying logits kept every row's logits
    # alive: 1.2 GiB more in one batch of perturbations on smollm2.
    tokens, mask = _batch(prompts)
    assert torch.is_grad_enabled()
    assert any(parameter.requires_grad for parameter in bridge.parameters())
    stack = LayerStack(bridge, tokens, mask)
    clean = clean_run(stack, logits=False)
    assert not clean.resid[-1].requires_grad
    logits = stack.logits(clean.resid[-1][0])
    assert not logits.requires_grad
    assert logits.grad_fn is None


def test_clean_run_without_mid_or_logits(bridge, prompts):
    tokens, mask = _batch(prompts)
    stack = LayerStack(bridge, tokens, mask)
    full = clean_run(stack)
    lean = clean_run(stack, logits=False, mid=False)
    assert lean.mid == []
    assert lean.logits is None
    assert len(full.mid) == N_LAYERS
    assert len(lean.resid) == len(full.resid) == N_LAYERS + 1
    for left, right in zip(lean.resid, full.resid, strict=True):
        assert torch.equal(left, right)


def test_residual_nll_matches_batch_logits(bridge, prompts):
    tokens, mask = _batch(prompts)
    stack = LayerStack(bridge, tokens, mask)
    clean = clean_run(stack)
    expected, expected_mask = next_token_nll(clean.logits, stack.tokens, stack.attention_mask)
    nll, scored = residual_nll(stack, clean.resid[-1])
    assert torch.equal(scored, expected_mask)
    assert bool((nll[scored] > 0).all())
    # One sequence's matmul may round differently from the batch's.
    torch.testing.assert_close(nll, expected, atol=1e-5, rtol=1e-5)


def test_clean_probabilities_only_at_measured(bridge, prompts):
    tokens, mask = _batch(prompts)
    stack = LayerStack(bridge, tokens, mask)
    positions = torch.zeros(tokens.shape, dtype=torch.bool)
    positions[0, 3:7] = True
    positions[2, 10] = True
    clean = clean_run(stack)
    probs = CleanProbabilities.at_positions(stack, clean, positions)
    assert probs.rows.shape == (5, clean.logits.shape[-1])
    assert int((probs.slot >= 0).sum()) == 5
    expected = torch.softmax(clean.logits[positions], dim=-1)
    torch.testing.assert_close(probs.at(*positions.nonzero(as_tuple=True)), expected)


def test_shared_clean_run_matches_separate(bridge, prompts):
    options = dict(mode="future", batch_size=2, n_positions=2, seed=5)
    shared = skip_effect_arrays_by_part(bridge, prompts, parts=("layer", "attn", "mlp"), **options)
    for part in ("layer", "attn", "mlp"):
        alone = skip_effect_arrays(bridge, prompts, part=part, **options)
        # Same clean run, positions and layer calls, so the arrays agree bit for bit.
        np.testing.assert_array_equal(shared[part].effect, alone.effect)
        np.testing.assert_array_equal(shared[part].output, alone.output)
        assert shared[part].layer_forwards == alone.layer_forwards


def test_future_at_answer_start(bridge):
    # With future_at="answer", t is each prompt's answer_start label. For prompts of one
    # length and one t, that equals the grid mode whose only candidate position is t.
    generator = torch.Generator().manual_seed(7)
    t, length = 17, 24
    tasks = PromptSet(
        "tasks",
        [
            Prompt(f"q{i}", torch.randint(0, 97, (length,), generator=generator).tolist(),
                   {"answer_start": t})
            for i in range(3)
        ],
    )
    answer = skip_effect_arrays(bridge, tasks, mode="future", future_at="answer", batch_size=2)
    grid = skip_effect_arrays(
        bridge, tasks, mode="future", n_positions=1, position_grid=(t, 10**6, 0), batch_size=2
    )
    np.testing.assert_array_equal(answer.effect, grid.effect)
    np.testing.assert_array_equal(answer.output, grid.output)
    # A different t per prompt, read in prompt order across batches: the last prompt's
    # effects are those of a one-prompt run at its own t.
    tasks.prompts[2].labels["answer_start"] = 9
    mixed = skip_effect_arrays(bridge, tasks, mode="future", future_at="answer", batch_size=2)
    alone = skip_effect_arrays(
        bridge, PromptSet("last", tasks.prompts[2:]), mode="future", future_at="answer"
    )
    np.testing.assert_allclose(mixed.effect[2], alone.effect[0], atol=ENGINE_ATOL, rtol=0)
    assert not np.allclose(mixed.effect[2], answer.effect[2], equal_nan=True)
    table = skip_effects(bridge, tasks, mode="future", future_at="answer")
    assert set(table["future_at"]) == {"answer"}


def test_future_at_answer_rejects_unlabelled_prompts(bridge, prompts):
    with pytest.raises(ValueError, match="answer_start"):
        skip_effect_arrays(bridge, prompts, mode="future", future_at="answer")
    late = PromptSet("late", [Prompt("a", list(range(10)), {"answer_start": 10})])
    with pytest.raises(ValueError, match="answer_start 10 for 10 tokens"):
        skip_effect_arrays(bridge, late, mode="future", future_at="answer")
    with pytest.raises(ValueError, match="future_at"):
        skip_effect_arrays(bridge, prompts, mode="future", future_at="middle")

def test_skip_rejects_bad_input(bridge, prompts):
    with pytest.raises(ValueError, match="part"):
        skip_effects(bridge, prompts, parts="ffn")
    short = PromptSet("short", [Prompt("a", [1, 2, 3, 4, 5])])
    with pytest.raises(ValueError, match="5 tokens"):
        skip_effects(bridge, short, mode="future")


# --- depth score ------------------------------------------------------------------------


def test_depth_score_of_planted_matrix():
    effect = np.array(
        [
            [9.0, 1.0, 1.0, 1.0],  # e_0 = 3 / 3 = 1 (the diagonal is ignored)
            [9.0, 9.0, 0.0, 2.0],  # e_1 = 2 / 2 = 1
            [9.0, 9.0, 9.0, 3.0],  # e_2 = 3 / 1 = 3
            [9.0, 9.0, 9.0, 9.0],  # e_3 = 0 (no later layer)
        ]
    )
    assert depth_score_of_matrix(effect) == pytest.approx((0 * 1 + 1 * 1 + 2 * 3) / 5)
    assert depth_score_of_vector(np.array([1.0, 0.0, 0.0, 1.0])) == pytest.approx(1.5)


def test_depth_score_per_set_with_interval(bridge, prompts):
    sets = {f"level {v}": prompts.select(level=v) for v in (0, 1)}
    table = depth_score(bridge, sets, n_bootstrap=50)
    assert list(table["prompt_set"].unique()) == ["level 0", "level 1"]
    assert set(table["source"]) == {"layer_effect", "output_effect"}
    assert (table["ci_low"] <= table["ci_high"]).all()
    assert table["value"].between(0, N_LAYERS - 1).all()


def test_depth_score_matches_skip_table(bridge, prompts):
    scores = depth_score(bridge, prompts, n_bootstrap=0)
    from_table = depth_score_from_table(skip_effects(bridge, prompts, mode="future"))
    from_table = from_table[from_table["statistic"] == "max"]
    for source in ("layer_effect", "output_effect"):
        expected = scores.loc[scores["source"] == source, "value"].item()
        assert from_table.loc[from_table["source"] == source, "value"].item() == pytest.approx(expected)


# --- surgery ----------------------------------------------------------------------------


def _assert_restored(bridge, prompts, reference, modules):
    assert len(bridge.blocks) == N_LAYERS
    assert all(a is b for a, b in zip(bridge.blocks, modules, strict=True))
    assert bridge.original_model.config.num_hidden_layers == N_LAYERS
    assert bridge.cfg.n_layers == N_LAYERS
    for block in bridge.blocks:
        for module in block.modules():
            assert not module._forward_hooks
    assert torch.equal(_logits(bridge, prompts), reference)


@pytest.mark.parametrize(
    "context",
    [
        lambda m: layer_order(m, [0, 1, 1, 5, 3, 7]),
        lambda m: layer_order(m, list(range(N_LAYERS))[::-1]),
        lambda m: looped(m, 2, 6, 3),
        lambda m: skipped(m, 3, "layer"),
        lambda m: skipped(m, 5, "attn"),
    ],
    ids=["reorder", "reverse", "loop", "skip", "skip-attn"],
)
def test_surgery_restores_after_exception(bridge, prompts, context):
    reference = _logits(bridge, prompts)
    modules = list(bridge.blocks)
    with pytest.raises(RuntimeError, match="inside"):
        with context(bridge):
            assert not torch.equal(_logits(bridge, prompts), reference)
            raise RuntimeError("failure inside the context")
    _assert_restored(bridge, prompts, reference, modules)
    with context(bridge):
        pass
    _assert_restored(bridge, prompts, reference, modules)


def test_identity_permutation_is_noop(bridge, prompts):
    reference = _logits(bridge, prompts)
    with layer_order(bridge, range(N_LAYERS)):
        assert torch.equal(_logits(bridge, prompts), reference)
    table = perturbations(bridge, prompts, levels=("layer",), kinds=("identity",))
    values = table.set_index("metric")["value"]
    assert values["delta_nll"] == 0
    assert values["kl"] == 0
    assert values["top1_agreement"] == 1


def test_repeated_layers_are_deep_copies(bridge):
    with looped(bridge, 2, 4, 2) as model:
        assert len(model.blocks) == N_LAYERS + 2
        first, copy = model.blocks[2], model.blocks[4]
        assert first is not copy
        for a, b in zip(first.parameters(), copy.parameters(), strict=True):
            assert a is not b
            assert torch.equal(a, b)


# --- perturbations ----------------------------------------------------------------------


def test_block_size_from_growth_history(bridge):
    assert block_size_of(bridge) == BLOCK


def test_perturbation_orders_by_level():
    orders = perturbation_orders(8, 4, n_shuffles=1)
    block = {(p.kind, p.position): p.order for p in orders if p.level == "block"}
    assert block[("remove", 0)] == (4, 5, 6, 7)
    assert block[("swap", 0)] == (4, 5, 6, 7, 0, 1, 2, 3)
    assert block[("reverse_inside", 1)] == (0, 1, 2, 3, 7, 6, 5, 4)
    layer = {(p.kind, p.position): p.order for p in orders if p.level == "layer"}
    assert layer[("reverse_middle", None)] == (0, 6, 5, 4, 3, 2, 1, 7)
    assert layer[("swap", 6)] == (0, 1, 2, 3, 4, 5, 7, 6)
    assert sorted(layer[("shuffle_middle", 0)]) == list(range(8))
    with pytest.raises(ValueError, match="does not divide"):
        perturbation_orders(8, 3)


def test_perturbations_table(bridge, prompts):
    table = perturbations(bridge, prompts, n_shuffles=2)
    assert set(table["level"]) == {"layer", "block"}
    assert set(table["metric"]) == {"delta_nll", "kl", "top1_agreement", "nll"}
    removed = table[(table["level"] == "layer") & (table["kind"] == "remove")]
    zero = removed[removed["position"] == ZERO_LAYER].set_index("metric")["value"]
    # Removing a layer that adds nothing leaves every later input, so the logits, unchanged.
    assert zero["kl"] == pytest.approx(0, abs=1e-7)
    assert zero["top1_agreement"] == 1
    kl = table[table["metric"] == "kl"]
    assert (kl["value"] >= -1e-7).all()
    assert kl["value"].max() > 1e-4


def test_perturbations_prefix_matches_surgery(bridge, prompts):
    fast = perturbations(bridge, prompts, n_shuffles=2, batch_size=3, progress=False)
    reference = perturbations(
        bridge, prompts, n_shuffles=2, batch_size=3, engine="surgery", progress=False
    )
    keys = ["level", "kind", "position", "order", "metric", "n_tokens"]
    pd.testing.assert_frame_equal(fast[keys], reference[keys])
    # The prefix engine starts from the clean residual instead of recomputing the layers
    # before the change. Both run the same float32 operations, so only rounding may differ.
    np.testing.assert_allclose(fast["value"], reference["value"], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="engine"):
        perturbations(bridge, prompts, engine="fast")



def test_clean_reference_metrics_match_log_softmax():
    # compare() reads KL and NLL from logsumexp and one dot product; check them against
    # the textbook log-softmax forms on random logits with a padded position.
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 5, 11, generator=generator) * 3
    perturbed = clean + torch.randn(2, 5, 11, generator=generator)
    tokens = torch.randint(0, 11, (2, 5), generator=generator)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 4] = 0
    metrics = compare_logits(clean, perturbed, tokens, mask)
    log_p, log_q = clean.log_softmax(-1), perturbed.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    nll_p = -log_p[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    nll_q = -log_q[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    # Scored: positions 1..n-2 whose next token is real (position 0 excluded by default).
    scored = torch.zeros(2, 4, dtype=torch.bool)
    scored[0, 1:4] = True
    scored[1, 1:3] = True
    count = int(scored.sum())
    assert metrics["kl"][1] == count
    # float32 sums of a few terms: rounding stays far below 1e-5.
    assert metrics["kl"][0] == pytest.approx(float(kl[:, :-1][scored].sum()), rel=1e-5)
    assert metrics["nll"][0] == pytest.approx(float(nll_q[scored].sum()), rel=1e-5)
    delta = float((nll_q - nll_p)[scored].sum())
    assert metrics["delta_nll"][0] == pytest.approx(delta, rel=1e-5, abs=1e-5)


def test_perturbations_share_runs_of_equal_orders(bridge, prompts):
    # At block size 2, reversing block k is the layer swap of 2k and 2k + 1: the two
    # rows come from one run, and they must equal the surgery engine's separate runs.
    table = perturbations(bridge, prompts, block_size=2, kinds=("swap", "reverse_inside"))
    value = table.set_index(["level", "kind", "position", "metric"])["value"]
    reference = perturbations(
        bridge, prompts, block_size=2, kinds=("swap", "reverse_inside"), engine="surgery",
        progress=False,
    ).set_index(["level", "kind", "position", "metric"])["value"]
    for k in range(N_LAYERS // 2):
        for metric in ("kl", "delta_nll", "top1_agreement"):
            shared = value[("block", "reverse_inside", k, metric)]
            assert shared == value[("layer", "swap", 2 * k, metric)]
            assert shared == pytest.approx(reference[("block", "reverse_inside", k, metric)], abs=1e-6)

# --- pruning and looping ----------------------------------------------------------------


def test_pruning_metrics_on_zero_layer(bridge, prompts):
    table = pruning_metrics(bridge, prompts)
    by_layer = table[table["span"].isna()].set_index(["metric", "layer"])["value"]
    assert by_layer[("block_influence", ZERO_LAYER)] == pytest.approx(0, abs=1e-6)
    assert by_layer[("delta_nll_remove", ZERO_LAYER)] == pytest.approx(0, abs=1e-6)
    angle = table[table["metric"] == "angular_distance"]
    spans = angle.set_index(["layer", "span"])["value"]
    # arccos near 1 magnifies float32 rounding of the cosine: arccos(1 − 6e-8)/π ≈ 1e-4.
    assert spans[(ZERO_LAYER, 1)] < 1e-3
    assert set(angle["span"]) == set(range(1, N_LAYERS // 2 + 1))
    assert angle["value"].between(0, 1).all()


def test_pruning_reuses_skip_runs(bridge, prompts):
    separate = pruning_metrics(bridge, prompts, batch_size=3)
    arrays = skip_effect_arrays_by_part(
        bridge, prompts, parts=("layer", "mlp"), batch_size=3, removal_nll=True, progress=False
    )["layer"]
    assert arrays.removal_nll.shape == (N_LAYERS,)
    shared = pruning_metrics(bridge, prompts, batch_size=3, skip_arrays=arrays)
    pd.testing.assert_frame_equal(shared.drop(columns="value"), separate.drop(columns="value"))
    # The skip engine stacks runs along the batch, so its matmuls round differently.
    np.testing.assert_allclose(shared["value"], separate["value"], atol=1e-6, rtol=1e-6)
    removed = shared[shared["metric"] == "delta_nll_remove"]["value"]
    assert removed.abs().max() > 1e-3


def test_removal_nll_rejects_other_runs(bridge, prompts):
    with pytest.raises(ValueError, match="removal_nll"):
        skip_effect_arrays_by_part(bridge, prompts, mode="future", removal_nll=True)
    with pytest.raises(ValueError, match="removal_nll"):
        skip_effect_arrays_by_part(bridge, prompts, parts=("attn",), removal_nll=True)
    without = skip_effect_arrays(bridge, prompts, progress=False)
    with pytest.raises(ValueError, match="removal_nll=True"):
        pruning_metrics(bridge, prompts, skip_arrays=without)
    shorter = PromptSet("shorter", prompts.prompts[:2])
    arrays = skip_effect_arrays_by_part(
        bridge, shorter, parts=("layer",), removal_nll=True, progress=False
    )["layer"]
    with pytest.raises(ValueError, match="same model and prompts"):
        pruning_metrics(bridge, prompts, skip_arrays=arrays)


def test_suite_shares_skip_runs_with_pruning(bridge, prompts):
    from depthcurse.suite import SuiteOptions, run_suite

    options = SuiteOptions(skip_parts=("layer", "attn"), batch_size=3)
    together = run_suite(bridge, prompts, only=["skip_effects", "pruning"], options=options)
    alone = {
        name: run_suite(bridge, prompts, only=[name], options=options)[name]
        for name in ("skip_effects", "pruning")
    }
    pd.testing.assert_frame_equal(together["skip_effects"], alone["skip_effects"])
    pd.testing.assert_frame_equal(
        together["pruning"].drop(columns="value"), alone["pruning"].drop(columns="value")
    )
    # Pruning's removals come from the stacked skip runs here: equal up to rounding.
    np.testing.assert_allclose(
        together["pruning"]["value"], alone["pruning"]["value"], atol=1e-6, rtol=1e-6
    )


def test_loop_block_single_pass_is_clean(bridge, prompts):
    calls = []

    def evaluate(model):
        calls.append(len(model.blocks))
        return {"depth": float(len(model.blocks))}

    table = loop_block(bridge, prompts, 2, 6, repeats=(1, 2), evaluate=evaluate)
    values = table.set_index(["repeats", "metric"])["value"]
    assert values[(1, "delta_nll")] == 0
    assert values[(2, "delta_nll")] != 0
    assert calls == [N_LAYERS, N_LAYERS + 4]
    with pytest.raises(ValueError, match="loop span"):
        loop_block(bridge, prompts, 6, 2)


# --- periodicity and symmetry -----------------------------------------------------------


def test_periodicity_finds_planted_period():
    depth = np.arange(32)
    planted = np.tile([1.0, 0.2, 0.3, 0.25], 8) + 0.03 * depth
    assert dominant_period(planted) == 4
    assert autocorrelation(planted)[4] > 0.8
    noise = np.random.default_rng(0).normal(size=32)
    assert dominant_period(noise) is None
    table = pd.DataFrame({"layer": depth, "metric": "attn", "value": planted})
    result = periodicity(table)
    assert result.loc[result["metric"] == "dominant_period", "value"].item() == 4


def test_periodicity_from_model(bridge, prompts):
    contributions = relative_contributions(bridge, prompts)
    assert set(contributions["metric"]) == {"attn", "mlp", "layer"}
    zero = contributions[contributions["layer"] == ZERO_LAYER]
    assert zero["value"].abs().max() == 0
    table = periodicity(bridge, prompts)
    assert set(table["metric"]) == {"autocorrelation", "dominant_period"}


def test_symmetry_score():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 6))
    symmetric = base + base[::-1, ::-1]
    assert mirror_asymmetry(symmetric) == pytest.approx(0, abs=1e-12)
    assert mirror_asymmetry(base) > 0.1
    table = symmetry_scores(symmetric, block_size=1)
    assert set(table["region"]) == {"all", "middle"}
    assert table["value"].abs().max() == pytest.approx(0, abs=1e-12)


def test_symmetry_scores_of_model(bridge):
    table = symmetry_scores(bridge)
    assert table["block_size"].iloc[0] == BLOCK
    assert set(table["region"]) == {"all", "middle"}
    assert table["value"].notna().all()



def test_symmetry_reads_every_weight_source(bridge):
    from safetensors.torch import load_file

    from depthcurse.analyses.symmetry import weight_similarity
    from depthcurse.checkpoint import load_checkpoint

    folder = Path(bridge.depthcurse_info.source)
    hf_model = bridge.original_model
    state = load_file(folder / "model.safetensors")
    model, _ = load_checkpoint(folder)
    # Hand-computed reference: cosines of each layer's concatenated, flattened weights.
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    vectors = torch.stack(
        [
            torch.cat([state[f"model.layers.{layer}.{name}.weight"].flatten() for name in names])
            for layer in range(N_LAYERS)
        ]
    ).double()
    unit = vectors / vectors.norm(dim=-1, keepdim=True)
    expected = (unit @ unit.T).numpy()
    # float32 cosines over a few thousand entries round far below 1e-5.
    for source in (bridge, hf_model, model, state):
        np.testing.assert_allclose(weight_similarity(source), expected, atol=1e-5)
    from_state = symmetry_scores(state, block_size=BLOCK)
    from_bridge = symmetry_scores(bridge)
    np.testing.assert_allclose(from_state["value"], from_bridge["value"], atol=1e-6)
    assert from_state["model"].iloc[0] == ""
    assert symmetry_scores(model)["model"].iloc[0] == "DepthcurseLM"

def test_module_weight_similarity_matches_hand(bridge):
    from safetensors.torch import load_file

    from depthcurse.analyses import weight_similarity as weight_table
    from depthcurse.analyses.symmetry import weight_similarity

    state = load_file(Path(bridge.depthcurse_info.source) / "model.safetensors")
    vectors = torch.stack(
        [state[f"model.layers.{layer}.self_attn.o_proj.weight"].flatten() for layer in range(N_LAYERS)]
    ).double()
    norms = vectors.norm(dim=-1, keepdim=True)
    expected = (vectors @ vectors.T / (norms * norms.T).clamp_min(1e-12)).numpy()
    expected[ZERO_LAYER] = expected[:, ZERO_LAYER] = 0.0  # the planted zero W_O has no direction
    matrix = weight_similarity(bridge, "o")
    np.testing.assert_allclose(matrix, expected, atol=1e-6)
    assert matrix[ZERO_LAYER, ZERO_LAYER] == 0.0
    table = weight_table(bridge)
    w_o = table[table["metric"] == "W_O"].pivot(index="layer", columns="other_layer", values="value")
    np.testing.assert_allclose(w_o.to_numpy(), expected, atol=1e-6)


# --- linear maps ------------------------------------------------------------------------


def test_linear_map_recovers_planted_relation():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(400, 8, generator=generator)
    planted = source @ torch.randn(8, 5, generator=generator) + 0.5
    unrelated = torch.randn(400, 5, generator=generator)
    errors = fit_linear_maps([source], [planted, unrelated], ridge=1e-9)
    assert errors[0, 0] < 1e-4
    assert errors[0, 1] > 0.9


def test_linear_map_between_models(bridge, other_bridge, prompts):
    table = linear_map(bridge, other_bridge, prompts)
    assert table["source_layer"].nunique() == N_LAYERS + 1
    assert table["target_layer"].nunique() == 4 + 1
    self_map = linear_map(bridge, bridge, prompts)
    diagonal = self_map[self_map["source_layer"] == self_map["target_layer"]]
    assert diagonal["value"].max() < 0.01


# --- plots ------------------------------------------------------------------------------


def test_plots_draw_from_tables(bridge, other_bridge, prompts, tmp_path):
    skip = skip_effects(bridge, prompts, parts=("layer", "attn"))
    figures = {
        "skip": plots.plot_skip_matrix(skip),
        "output": plots.plot_output_change(skip),
        "depth": plots.plot_depth_scores(depth_score(bridge, prompts, n_bootstrap=20)),
        "perturb": plots.plot_perturbations(perturbations(bridge, prompts, n_shuffles=1)),
        "pruning": plots.plot_pruning(pruning_metrics(bridge, prompts)),
        "loop": plots.plot_loop(loop_block(bridge, prompts, 2, 6, repeats=(1, 2))),
        "period": plots.plot_periodicity(periodicity(bridge, prompts)),
        "symmetry": plots.plot_symmetry(symmetry_scores(bridge)),
        "map": plots.plot_linear_map(linear_map(bridge, other_bridge, prompts)),
    }
    for name, figure in figures.items():
        assert figure.axes, name
        figure.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    # The linear-map figure names both models: which one the maps start from matters.
    map_axes = figures["map"].axes[0]
    assert "→" in map_axes.get_title()
    assert map_axes.get_xlabel() != "target layer (model B)"
    with pytest.raises(ValueError, match="skip_effects"):
        plots.plot_skip_matrix(pd.DataFrame({"value": [1.0]}))
