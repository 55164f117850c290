"""Tests of `depthcurse analyze` and `depthcurse compare` on tiny random checkpoints."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from depthcurse.cli import app

SMALL = [
    "--n-prompts", "4", "--prompt-tokens", "32",
    "--option", "tuned_lens_steps=5", "--option", "batch_size=4",
]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.slow
def test_analyze_writes_tables_figures_and_reuses_cache(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    args = ["analyze", str(tiny_checkpoints["a"]), "--out", str(out),
            "--only", "residual_norms,contributions,pruning", *SMALL]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    for name in ("residual_norms", "contributions", "pruning"):
        assert (out / "tables" / f"{name}.parquet").is_file()
        assert (out / "tables" / f"{name}.csv").is_file()
        assert (out / "figures" / f"{name}.pdf").is_file()
        assert (out / "figures" / f"{name}.png").is_file()
    table = pd.read_parquet(out / "tables" / "pruning.parquet")
    assert set(table["model"]) == {"a"}
    cached = sorted(p.name for p in (out / "cache").iterdir())
    assert len(cached) == 3

    # A second run reads every table from the cache and writes no new entry.
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cache").iterdir()}
    second = invoke(*args, "--no-figures")
    assert second.exit_code == 0, second.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cache").iterdir()} == stamps
    pd.testing.assert_frame_equal(pd.read_parquet(out / "tables" / "pruning.parquet"), table)


def test_analyze_run_folder_label_and_cache_option(tiny_checkpoints, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step-000001").symlink_to(tiny_checkpoints["a"], target_is_directory=True)
    cache = tmp_path / "shared-cache"
    result = invoke("analyze", str(run), "--out", str(tmp_path / "out"), "--cache", str(cache),
                    "--only", "symmetry", "--no-figures", *SMALL)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "out" / "tables" / "symmetry.parquet")
    assert set(table["model"]) == {"run"}
    assert len(list(cache.glob("symmetry-*.parquet"))) == 1



def test_analyze_bfloat16_gets_its_own_cache_entry(tiny_checkpoints, tmp_path):
    cache = tmp_path / "cache"
    tables = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        result = invoke("analyze", str(tiny_checkpoints["a"]), "--out", str(out), "--cache",
                        str(cache), "--only", "skip_effects,perturbations", "--no-figures",
                        "--dtype", dtype, *SMALL)
        assert result.exit_code == 0, result.output
        tables[dtype] = {
            name: pd.read_parquet(out / "tables" / f"{name}.parquet")
            for name in ("skip_effects", "perturbations")
        }
    # Each dtype computed its own tables: a cache shared with float32 must not serve
    # a bfloat16 run, because rounding changes the results.
    assert len(list(cache.glob("skip_effects-*.parquet"))) == 2
    assert set(tables["bfloat16"]["skip_effects"]["model_dtype"]) == {"bfloat16"}
    assert set(tables["float32"]["perturbations"]["model_dtype"]) == {"float32"}
    for name, keys in (("skip_effects", ["part", "skip_layer", "layer", "metric", "statistic"]),
                       ("perturbations", ["level", "kind", "position", "metric"])):
        low = tables["bfloat16"][name].set_index(keys)["value"]
        full = tables["float32"][name].set_index(keys)["value"].loc[low.index]
        assert low.notna().all(), name
        assert (low != full).any(), name
        # bfloat16 keeps 8 bits of mantissa, so over a 4-layer model the metrics move by
        # rounding only: a few hundredths where they are of order one.
        assert (low - full).abs().max() < 0.1, name
    bad = invoke("analyze", str(tiny_checkpoints["a"]), "--out", str(tmp_path / "x"),
                 "--dtype", "float16")
    assert bad.exit_code != 0
    assert "float16" in bad.output
    assert "bfloat16" in bad.output

def _run_with_steps(run, tiny_checkpoints, steps):
    """Write checkpoints of one random 2-layer model at `steps` into run folder `run`."""
    from depthcurse.checkpoint import save_checkpoint
    from depthcurse.config import ModelConfig
    from depthcurse.model import DepthcurseLM

    config = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         d_mlp=64, max_seq_len=64)
    model = DepthcurseLM(config)
    tokenizer = tiny_checkpoints["a"].parent / "tokenizer.json"
    for step in steps:
        save_checkpoint(run / "checkpoints" / f"step-{step:06d}", model, tokenizer_file=tokenizer,
                        metadata={"step": step, "stage": 0})
    return run


def test_run_folder_labels(tiny_checkpoints, tmp_path):
    import depthcurse
    from depthcurse.sources import checkpoint_label
    from depthcurse.suite import model_label

    run = _run_with_steps(tmp_path / "midas-s0", tiny_checkpoints, (100, 300))
    final, earlier = run / "checkpoints" / "step-000300", run / "checkpoints" / "step-000100"
    assert checkpoint_label(run) == "midas-s0"
    assert checkpoint_label(final) == "midas-s0"
    assert checkpoint_label(earlier) == "midas-s0/step-100"
    assert checkpoint_label(tiny_checkpoints["a"]) == "a"
    # The labels run_suite writes when no label is given.
    assert model_label(depthcurse.load(run)) == "midas-s0"
    assert model_label(depthcurse.load(run, step=100)) == "midas-s0/step-100"


def test_compare_labels_stay_distinct():
    from depthcurse.analyze import distinct_labels

    assert distinct_labels("midas-s0", "midas-s0") == ("A midas-s0", "B midas-s0")
    assert distinct_labels("midas-s0", "midas-s0/step-100") == ("midas-s0", "midas-s0/step-100")


@pytest.mark.slow
def test_compare_models_of_different_depth(tiny_checkpoints, tmp_path):
    out = tmp_path / "cmp"
    result = invoke("compare", str(tiny_checkpoints["a"]), str(tiny_checkpoints["b"]), "--out", str(out),
                    "--only", "contributions,logit_lens,skip_effects,heldout_nll", *SMALL)
    assert result.exit_code == 0, result.output
    contributions = pd.read_parquet(out / "tables" / "contributions.parquet")
    assert contributions.groupby("model")["layer"].max().to_dict() == {"a": 3, "b": 5}
    linear = pd.read_parquet(out / "tables" / "linear_map.parquet")
    assert linear["source_layer"].max() == 4
    assert linear["target_layer"].max() == 6
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"contributions.png", "lens.png", "skip_effects-difference.png", "linear_map.pdf"} <= figures
    assert {"skip_effects-a.png", "skip_effects-b.png"} <= figures
    report = (out / "report.md").read_text()
    assert "| metric | a | b | B − A | differ? |" in report
    assert "held-out NLL (nats/token)" in report
    assert "## Linear map" in report


def test_compare_different_tokenizers_skips_linear_map(tiny_checkpoints, tmp_path):
    out = tmp_path / "cmp"
    result = invoke("compare", str(tiny_checkpoints["a"]), str(tiny_checkpoints["c"]), "--out", str(out),
                    "--only", "heldout_nll", "--no-figures", *SMALL)
    assert result.exit_code == 0, result.output
    assert "linear map was skipped" in result.output
    assert not (out / "tables" / "linear_map.parquet").exists()
    report = (out / "report.md").read_text()
    assert "vocabularies differ in size: 300 and 280 tokens" in report
    assert "not comparable between these two models" in report
    table = pd.read_parquet(out / "tables" / "heldout_nll.parquet")
    assert list(table["model"]) == ["a", "c"]


def test_compare_same_folder_names_get_distinct_labels(tiny_checkpoints, tmp_path):
    result = invoke("compare", str(tiny_checkpoints["a"]), str(tiny_checkpoints["a"]),
                    "--out", str(tmp_path / "cmp"), "--only", "heldout_nll", "--no-figures", *SMALL)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "cmp" / "tables" / "heldout_nll.parquet")
    assert list(table["model"]) == ["A a", "B a"]
    # Same weights and prompts: identical numbers.
    assert table["nll"].iloc[0] == table["nll"].iloc[1]


def test_analyze_missing_source(tmp_path):
    result = invoke("analyze", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert not (tmp_path / "out").exists()


def test_analyze_unknown_analysis_name(tiny_checkpoints, tmp_path):
    result = invoke("analyze", str(tiny_checkpoints["a"]), "--only", "residual_norms,depth_scores")
    assert result.exit_code == 2
    assert "unknown analysis 'depth_scores'" in result.output


def test_analyze_bad_suite_option(tiny_checkpoints, tmp_path):
    result = invoke("analyze", str(tiny_checkpoints["a"]), "--option", "tuned_lens_step=5")
    assert result.exit_code == 2
    assert "tuned_lens_step" in result.output
    result = invoke("analyze", str(tiny_checkpoints["a"]), "--option", "seed")
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.output


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("tuned_lens_steps=abc", "tuned_lens_steps = 'abc' is invalid: it must be an integer >= 0"),
        ("batch_size=2.5", "batch_size = 2.5 is invalid: it must be an integer >= 1"),
        ("depth_score_prompts=-3", "depth_score_prompts = -3 is invalid"),
        ("skip_mode=bogus", "skip_mode = 'bogus' is invalid"),
        ('skip_parts=["layer", "ffn"]', "skip_parts = ('layer', 'ffn') is invalid"),
    ],
)
def test_analyze_bad_option_value_rejected_first(tiny_checkpoints, tmp_path, setting, message):
    out = tmp_path / "out"
    result = invoke("analyze", str(tiny_checkpoints["a"]), "--out", str(out), "--option", setting)
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())
    assert message in text
    assert not out.exists(), "no analysis may run before the options are checked"


def test_compare_missing_second_source(tiny_checkpoints, tmp_path):
    result = invoke("compare", str(tiny_checkpoints["a"]), str(tmp_path / "nowhere"),
                    "--out", str(tmp_path / "cmp"))
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_summary_halves_and_verdicts():
    from depthcurse.analyze import comparison_table, summary_metrics

    contributions = pd.DataFrame({
        "model": ["x"] * 4 + ["y"] * 3,
        "layer": [0, 1, 2, 3, 0, 1, 2],
        "metric": "layer",
        "statistic": "mean",
        "value": [1.0, 1.0, 3.0, 3.0, 2.0, 2.0, 2.0],
    })
    nll = pd.DataFrame({"model": ["x", "y"], "nll": [3.0, 2.0], "nll_low": [2.9, 1.9], "nll_high": [3.1, 2.1]})
    summary = summary_metrics({"contributions": contributions, "heldout_nll": nll})
    values = summary.set_index(["model", "metric"])["value"]
    # x: layers 0, 1 have relative depth < 0.5, layers 2, 3 do not.
    assert values["x", "relative contribution ‖a+m‖/‖h‖, first half (mean over layers)"] == 1.0
    assert values["x", "relative contribution ‖a+m‖/‖h‖, second half / first half"] == 3.0
    assert values["y", "relative contribution ‖a+m‖/‖h‖, second half / first half"] == 1.0
    lines = comparison_table(summary, ("x", "y"))
    nll_line = next(line for line in lines if line.startswith("| held-out NLL"))
    assert "yes, intervals disjoint" in nll_line
    assert "-1 |" in nll_line
    ratio_line = next(line for line in lines if "second half / first half" in line)
    assert "67% apart, no interval" in ratio_line


def test_summary_halves_skip_middle_layer():
    from depthcurse.analyze import summary_metrics

    # Three layers at relative depth 0, 1/3 and 2/3: the middle one straddles 0.5.
    contributions = pd.DataFrame({
        "model": "x", "layer": [0, 1, 2], "metric": "layer", "statistic": "mean",
        "value": [1.0, 5.0, 3.0],
    })
    values = summary_metrics({"contributions": contributions}).set_index("metric")["value"]
    assert values["relative contribution ‖a+m‖/‖h‖, first half (mean over layers)"] == 1.0
    assert values["relative contribution ‖a+m‖/‖h‖, second half (mean over layers)"] == 3.0


def _report_models(n_layers: tuple[int, int]) -> tuple:
    from types import SimpleNamespace

    info = SimpleNamespace(describe=lambda: "checkpoint (float32)")
    return tuple(
        SimpleNamespace(cfg=SimpleNamespace(n_layers=n, d_model=32), depthcurse_info=info)
        for n in n_layers
    )


def test_compare_report_defines_terms(tmp_path):
    from depthcurse.analyze import Analysis, write_report

    scores = pd.DataFrame({
        "model": ["a", "a", "b", "b"], "prompt_set": "validation",
        "source": ["layer_effect", "output_effect"] * 2, "value": [1.0, 2.0, 2.5, 3.0],
        "ci_low": [0.5, 1.5, 2.0, 2.5], "ci_high": [1.5, 2.5, 3.0, 3.5],
        "mode": "future", "reduction": "max", "statistic": "max",
    })
    symmetry = pd.DataFrame({
        "model": ["a", "b"], "matrix": "all", "region": "all", "value": [0.4, 0.2],
    })
    result = Analysis(tmp_path, {"depth_score": scores, "symmetry": symmetry})
    report = write_report(result, ("a", "b"), _report_models((4, 6))).read_text()
    terms, table = report.split("| metric |")
    assert "**depth score, *prompt set*, layer_effect**" in terms
    assert "E[s, j] = ‖Δ_j^clean − Δ_j^skip‖₂ / ‖Δ_j^clean‖₂" in terms
    assert "A (a): 0 to 2, B (b): 0 to 4" in terms
    assert "skipped in future mode" in terms
    assert "**depth score, *prompt set*, output_effect**" in terms
    assert "A (a): 0 to 3, B (b): 0 to 5" in terms
    assert "**mirror asymmetry of *M* similarity**: ‖S − J S J‖_F / ‖S‖_F" in terms
    assert "| depth score, validation, layer_effect |" in table
    assert "| mirror asymmetry of all similarity |" in table
    assert "relative depth l / L" in terms


def test_compare_report_defines_only_used_terms(tmp_path):
    from depthcurse.analyze import Analysis, write_report

    nll = pd.DataFrame({
        "model": ["a", "b"], "nll": [3.0, 2.0], "nll_low": [2.9, 1.9], "nll_high": [3.1, 2.1],
    })
    result = Analysis(tmp_path, {"heldout_nll": nll})
    report = write_report(result, ("a", "b"), _report_models((4, 6)))
    text = report.read_text()
    assert "Terms in the metric names" not in text
    assert "| held-out NLL (nats/token) |" in text
