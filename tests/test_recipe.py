"""Study recipes: every shipped recipe validates, and bad recipes are rejected by name."""

from pathlib import Path

import pytest

from depthcurse.config import ConfigError
from depthcurse.recipe import BUILTIN_VARIANTS, load_study_recipe, parse_recipe
from depthcurse.train_config import build_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "analyses").glob("*.toml"))


def test_shipped_recipes_exist():
    names = {path.name for path in SHIPPED}
    assert {"tiny.toml", "small.toml", "paper-360m.toml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipe_validates(path):
    recipe = load_study_recipe(path)
    assert len(recipe.seeds) >= 2
    assert recipe.baseline == "none"
    assert set(recipe.variants) == set(BUILTIN_VARIANTS)
    for variant in recipe.variants:
        for seed in recipe.seeds:
            cfg = recipe.train_config(variant, seed).resolved()
            assert cfg.seed == seed
            assert cfg.model_config().n_layers % cfg.block_size == 0
    assert recipe.train_config("ln-scaling", 0).model["ln_scaling"] is True
    assert recipe.train_config("none", 0).model.get("ln_scaling", False) is False
    assert recipe.options.block_size == recipe.block_size()
    assert recipe.public is not None and recipe.public.source == "smollm2-135m"


def test_tiny_recipe_shapes():
    recipe = load_study_recipe(ROOT / "analyses" / "tiny.toml")
    cfg = recipe.train_config("midas", 0).resolved()
    model = cfg.model_config()
    assert (model.n_layers, model.d_model, cfg.block_size) == (8, 128, 2)
    assert (cfg.max_steps, cfg.seq_len) == (300, 128)


def test_training_recipe_is_a_train_table():
    # The [train] table of a study recipe and a training recipe share one format.
    import tomllib

    values = tomllib.loads((ROOT / "recipes" / "tiny-midas.toml").read_text())
    growth = values.pop("growth")
    recipe = parse_recipe({"train": values, "variants": [growth, "none"]})
    direct = build_config(recipe=ROOT / "recipes" / "tiny-midas.toml")
    assert recipe.train_config(growth, 0).to_dict() == direct.to_dict()


def minimal(**changes):
    values = {"seeds": [0, 1], "variants": ["none", "midas"], "train": {"max_steps": 10}}
    values.update(changes)
    return values


def test_unknown_top_key_named():
    with pytest.raises(ConfigError, match="unknown key 'sed'"):
        parse_recipe(minimal(sed=[0]))


def test_unknown_train_key_named():
    with pytest.raises(ConfigError, match="'max_step'"):
        parse_recipe(minimal(train={"max_step": 10}))


def test_unknown_model_key_named():
    with pytest.raises(ConfigError, match="'d_modell'"):
        parse_recipe(minimal(train={"model": {"d_modell": 64}}))


def test_unknown_analysis_option_named():
    with pytest.raises(ConfigError, match="'n_prompt'"):
        parse_recipe(minimal(analysis={"n_prompt": 4}))


def test_unknown_analysis_name_named():
    with pytest.raises(ConfigError, match="'skip_effect'"):
        parse_recipe(minimal(analysis={"only": ["skip_effect"]}))


def test_stage_analyses_must_be_stream_analyses():
    with pytest.raises(ConfigError, match="'perturbations'"):
        parse_recipe(minimal(analysis={"stage_analyses": ["perturbations"]}))


def test_unknown_public_key_named():
    with pytest.raises(ConfigError, match="'modle'"):
        parse_recipe(minimal(public={"modle": "smollm2-135m"}))


def test_bad_variant_name_rejected():
    with pytest.raises(ConfigError, match="unknown variant 'midsa'"):
        parse_recipe(minimal(variants=["none", "midsa"]))


def test_bad_variant_setting_named():
    variants = {"none": {"growth": "none"}, "odd": {"growth": "stack", "block_size": 3}}
    with pytest.raises(ConfigError, match="variant 'odd'"):
        parse_recipe(minimal(variants=variants))


def test_variant_growth_method_checked():
    with pytest.raises(ConfigError, match="growth='grow'"):
        parse_recipe(minimal(variants={"none": {"growth": "none"}, "x": {"growth": "grow"}}))


def test_baseline_must_be_a_full_depth_variant():
    with pytest.raises(ConfigError, match="baseline 'midas' must train at full depth"):
        parse_recipe(minimal(baseline="midas"))
    with pytest.raises(ConfigError, match="baseline 'base' is not one of the variants"):
        parse_recipe(minimal(baseline="base"))


def test_seeds_checked():
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        parse_recipe(minimal(seeds=[1, 1]))
    with pytest.raises(ConfigError, match="seeds must be a list"):
        parse_recipe(minimal(seeds=3))
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        parse_recipe(minimal(seeds=[0]))


def test_train_table_may_not_set_seed_or_growth():
    with pytest.raises(ConfigError, match="'seed'"):
        parse_recipe(minimal(train={"seed": 3}))


def test_more_seeds_extend_the_list():
    recipe = parse_recipe(minimal(seeds=[5, 7]))
    assert recipe.with_seeds(3).seeds == [5, 7, 0]
    assert recipe.with_seeds(1).seeds == [5]
    with pytest.raises(ConfigError, match="at least 1"):
        recipe.with_seeds(0)


def test_public_model_can_be_switched_off():
    assert parse_recipe(minimal(public={"enabled": False})).public is None


def test_missing_recipe_file_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_study_recipe(tmp_path / "nope.toml")
