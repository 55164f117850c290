"""Growth operators, stage schedule, compute accounting and optimizer transfer."""

import doctest

import pytest
import torch

from depthcurse import growth
from depthcurse.config import preset
from depthcurse.growth import (
    GrowthError,
    Lineage,
    compute_fraction,
    grow_model,
    layer_order,
    optimizer_state_by_name,
    plan_growth,
    stage_depths,
    stage_lengths,
    transfer_optimizer_state,
)
from depthcurse.model import DepthcurseLM


def test_doctests():
    result = doctest.testmod(growth)
    assert result.attempted >= 4
    assert result.failed == 0


@pytest.mark.parametrize(
    "method, depth, b, expected",
    [
        ("midas", 8, 4, [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]),
        ("lidas", 8, 4, [0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7]),
        ("stack", 8, 4, [0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7]),
        ("midas", 4, 4, [0, 1, 2, 3, 0, 1, 2, 3]),
        ("lidas", 4, 4, [0, 1, 0, 1, 2, 3, 2, 3]),
        # Three blocks: MIDAS copies block ceil(3/2) = 2.
        ("midas", 6, 2, [0, 1, 2, 3, 2, 3, 4, 5]),
        ("lidas", 6, 2, [0, 1, 2, 2, 3, 3, 4, 5]),
        ("midas", 16, 4, [0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
        ("lidas", 16, 4, [0, 1, 2, 3, 4, 5, 6, 7, 6, 7, 8, 9, 8, 9, 10, 11, 12, 13, 14, 15]),
        ("stack", 2, 2, [0, 1, 0, 1]),
        ("none", 8, 4, list(range(8))),
    ],
)
def test_layer_order(method, depth, b, expected):
    assert layer_order(method, depth, b) == expected


def test_lidas_odd_block_option_copies_middle_block():
    assert layer_order("lidas", 12, 4, lidas_odd="block") == layer_order("midas", 12, 4)
    assert layer_order("lidas", 12, 4) == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9, 10, 11]


def test_lidas_is_mirror_symmetric_for_even_block_count():
    order = layer_order("lidas", 8, 4)
    # The copy pattern reads the same from both ends after mapping i -> 7 - i.
    assert [7 - i for i in reversed(order)] == order


def test_bad_growth_inputs():
    with pytest.raises(GrowthError, match="depth 10 is not a positive multiple of block_size 4"):
        layer_order("midas", 10, 4)
    with pytest.raises(GrowthError, match="unknown growth method 'middle'"):
        layer_order("middle", 8, 4)
    with pytest.raises(GrowthError, match="even block_size"):
        layer_order("lidas", 6, 3)


def test_stage_schedule():
    assert stage_depths(8, 2) == [2, 4, 6, 8]
    assert stage_lengths(100, 4) == [10, 20, 30, 40]
    assert stage_lengths(100, 4, alpha=0) == [25, 25, 25, 25]
    lengths = stage_lengths(301, 4, alpha=2)
    assert sum(lengths) == 301
    assert lengths == sorted(lengths)
    assert stage_lengths(10, 2, explicit=[3, 7]) == [3, 7]
    with pytest.raises(GrowthError, match="lists 3 stage lengths.*has 2 stages"):
        stage_lengths(10, 2, explicit=[3, 3, 4])
    with pytest.raises(GrowthError, match="sum to 9, not to max_steps=10"):
        stage_lengths(10, 2, explicit=[3, 6])


def test_layer_flop_fraction_matches_hand_computation():
    cfg = preset("tiny", n_layers=8)
    depths = stage_depths(8, 2)
    lengths = stage_lengths(1000, 4)
    # PROP-1 with k = 4 stages: sum(i * i) / (k * sum(i)) = 30 / 40 = (2k + 1) / (3k) = 0.75.
    assert compute_fraction(cfg, depths, lengths, 128, layers_only=True) == pytest.approx(0.75)
    full = compute_fraction(cfg, depths, lengths, 128)
    # The unembedding costs the same at every depth, so the total fraction lies between.
    assert 0.75 < full < 1.0
    per_layer = growth.flops_per_token(cfg, 1, 128) - growth.flops_per_token(cfg, 0, 128)
    fixed = growth.flops_per_token(cfg, 0, 128)
    hand = (sum(d * n for d, n in zip(depths, lengths, strict=False)) * per_layer + 1000 * fixed) / (1000 * (8 * per_layer + fixed))
    assert full == pytest.approx(hand)


def make_trained_optimizer(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, model.cfg.vocab_size, (2, 8))
    for _ in range(2):
        loss = model(x).float().logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


@pytest.mark.parametrize("method", ["midas", "lidas", "stack"])
def test_copies_equal_source_then_diverge(small_config, method):
    cfg = small_config.replace(n_layers=4)
    model = DepthcurseLM(cfg)
    opt = make_trained_optimizer(model)
    old_state = optimizer_state_by_name(opt, model)
    plan = plan_growth(method, 4, 2)
    grow_model(model, plan)
    assert model.cfg.n_layers == 6
    new_opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    transfer_optimizer_state(old_state, new_opt, model, plan)
    for position in plan.new_positions:
        source = plan.position_after(plan.order[position])
        copy_params = dict(model.blocks[position].named_parameters())
        for name, src in model.blocks[source].named_parameters():
            assert copy_params[name] is not src
            assert torch.equal(copy_params[name], src)
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(new_opt.state[copy_params[name]][key], new_opt.state[src][key])
    # Existing layers keep their own moments.
    for old_index in range(plan.depth):
        position = plan.position_after(old_index)
        param = model.blocks[position].mlp.up_proj.weight
        old = old_state[f"blocks.{old_index}.mlp.up_proj.weight"]
        assert torch.equal(new_opt.state[param]["exp_avg"], old["exp_avg"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, cfg.vocab_size, (2, 8))
    new_opt.zero_grad()
    model(x).float().logsumexp(-1).mean().backward()
    new_opt.step()
    position = plan.new_positions[0]
    source = plan.position_after(plan.order[position])
    w_copy = model.blocks[position].attn.q_proj.weight
    w_src = model.blocks[source].attn.q_proj.weight
    assert not torch.equal(w_copy, w_src)
    assert not torch.equal(w_copy, before[f"blocks.{position}.attn.q_proj.weight"])


def test_fresh_moments_option(small_config):
    model = DepthcurseLM(small_config.replace(n_layers=2))
    opt = make_trained_optimizer(model)
    old_state = optimizer_state_by_name(opt, model)
    plan = plan_growth("midas", 2, 2)
    grow_model(model, plan)
    new_opt = torch.optim.AdamW(model.parameters())
    transfer_optimizer_state(old_state, new_opt, model, plan, copy_moments=False)
    assert model.blocks[2].attn.q_proj.weight not in new_opt.state
    assert model.blocks[0].attn.q_proj.weight in new_opt.state


def test_lineage_reconstructs_provenance_from_history():
    lineage = Lineage.initial(2)
    for stage, depth in enumerate([2, 4, 6], start=1):
        lineage.apply(plan_growth("midas", depth, 2), stage=stage, step=10 * stage)
    rebuilt = Lineage.from_history(2, lineage.history)
    assert rebuilt.layer_ids == lineage.layer_ids
    assert rebuilt.copied_from == lineage.copied_from
    # Every MIDAS copy descends from one of the two initial layers, in order.
    assert lineage.root_ids() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert len(set(lineage.layer_ids)) == 8
    event = lineage.history[0]
    assert event["new_layers"][0] == {
        "position": 2, "id": 2, "source_id": 0, "source_position": 0, "source_index_before": 0,
    }


def test_lineage_root_ids_lidas():
    lineage = Lineage.initial(4)
    lineage.apply(plan_growth("lidas", 4, 4), stage=1, step=5)
    assert lineage.root_ids() == [0, 1, 0, 1, 2, 3, 2, 3]
    assert lineage.layer_sources == [0, 1, 0, 1, 2, 3, 2, 3]
