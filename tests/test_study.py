"""End to end: `reproduce` on a micro recipe trains, analyses, reports and reuses its runs."""

import math

import pandas as pd
import pytest

from depthcurse.findings import Finding, verdict
from depthcurse.recipe import parse_recipe
from depthcurse.stats import Estimate, mean_ci

MICRO = """
name = "micro"
seeds = [0, 1]
variants = ["none", "midas"]

[train]
preset = "tiny"
block_size = 2
max_steps = 20
batch_size = 4
seq_len = 32
warmup_steps = 2
eval_interval = 5
eval_batches = 2
log_interval = 5

[train.model]
d_model = 32
n_layers = 4
n_heads = 2
n_kv_heads = 1
d_mlp = 64

[analysis]
n_prompts = 4
prompt_tokens = 32
batch_size = 4
skip_parts = ["layer"]
tuned_lens_steps = 2
eval_n_per_level = 2
depth_score_prompts = 2
depth_score_per_level = false

[public]
enabled = false
"""


def test_verdict_reads_the_interval():
    assert verdict(Estimate(0.5, 0.4, 0.6, 2, "t"), 1.0, "below") == "supported"
    assert verdict(Estimate(1.5, 1.2, 1.8, 2, "t"), 1.0, "below") == "not supported"
    assert verdict(Estimate(0.9, 0.5, 1.3, 2, "t"), 1.0, "below") == "inconclusive"
    assert verdict(Estimate(0.2, 0.1, 0.3, 3, "t"), 0.0, "above") == "supported"
    assert verdict(mean_ci([0.7]), 1.0, "below").startswith("holds for the single model")
    assert verdict(mean_ci([]), 1.0, "below") == "no data"


def test_finding_row_keeps_seed_values():
    estimate = mean_ci([1.0, 3.0])
    row = Finding("k", "q?", "midas", "inconclusive", "text", estimate, [1.0, 3.0]).row()
    assert row["value"] == 2.0
    assert row["per_seed"] == "1, 3"
    assert row["ci_low"] < 2.0 < row["ci_high"]


@pytest.mark.slow
def test_reproduce_micro_recipe_end_to_end(tmp_path):
    from depthcurse.study import reproduce

    recipe_file = tmp_path / "micro.toml"
    recipe_file.write_text(MICRO)
    out = tmp_path / "results"
    result = reproduce(recipe_file, out, progress=False, echo=lambda text: None)

    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["midas-seed0", "midas-seed1", "none-seed0", "none-seed1"]
    assert [r.status for r in result.runs] == ["trained"] * 4

    tables = out / "tables"
    for name in ("residual_norms", "contributions", "logit_lens", "skip_effects", "depth_score",
                 "perturbations", "periodicity", "copy_divergence", "training_curves", "models",
                 "findings"):
        assert (tables / f"{name}.parquet").is_file(), name
        assert (tables / f"{name}.csv").is_file(), name

    contributions = pd.read_parquet(tables / "contributions.parquet")
    assert set(contributions["variant"]) == {"none", "midas"}
    assert set(contributions["seed"].astype(int)) == {0, 1}
    # MIDAS grows 2 -> 4 layers: its stage-1 checkpoint has 2 layers, the final one 4.
    midas = contributions[contributions["model"] == "midas-seed0"]
    assert set(midas["stage"]) == {1, 2}
    assert midas[midas["stage"] == 1]["layer"].max() == 1
    assert midas[midas["stage"] == 2]["layer"].max() == 3
    baseline = contributions[contributions["model"] == "none-seed0"]
    assert set(baseline["stage"]) == {1}

    divergence = pd.read_parquet(tables / "copy_divergence.parquet")
    assert set(divergence["variant"]) == {"midas"}

    curves = pd.read_parquet(tables / "training_curves.parquet")
    final = curves[(curves["kind"] == "eval") & (curves["step"] == 20)]
    assert len(final) == 4
    fractions = final.groupby("variant")["compute_fraction"].first()
    assert fractions["none"] == pytest.approx(1.0)
    assert 0.5 < fractions["midas"] < 1.0  # shallower first stage

    findings = pd.read_parquet(tables / "findings.parquet")
    keys = set(findings["finding"])
    assert {"curse_of_depth/all", "curse_of_depth/excluding_layer_0", "depth_score",
            "periodicity", "block_vs_layer_swaps", "block_swaps_vs_baseline",
            "loss_vs_compute"} <= keys
    allowed = ("supported", "not supported", "inconclusive", "partly supported")
    for text in findings["verdict"]:
        assert text.startswith(allowed), text
    # Each finding's number is the mean of its per-seed values (geometric for ratios).
    for row in findings.itertuples():
        values = [float(v) for v in row.per_seed.split(", ")]
        if row.finding.startswith("curse_of_depth"):
            expected = math.exp(sum(math.log(v) for v in values) / len(values))
        else:
            expected = sum(values) / len(values)
        assert math.isclose(row.value, expected, rel_tol=1e-3)

    report = (out / "report.md").read_text()
    assert "## Findings" in report
    findings_section = report.split("## Findings")[1].split("## Figures")[0]
    assert "per seed:" in findings_section
    assert "(n=2, t)" in findings_section
    assert "Public model: not analysed" in report
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "<h2>Findings</h2>" in html
    assert (out / "figures" / "contributions.png").is_file()
    assert (out / "figures" / "contributions.pdf").is_file()
    assert 'src="data:image/png;base64,' in html

    # A second call reuses every run: no checkpoint is rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("model.safetensors")}
    again = reproduce(recipe_file, out, progress=False, figures=False, echo=lambda text: None)
    assert [r.status for r in again.runs] == ["reused"] * 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    pd.testing.assert_frame_equal(
        pd.read_parquet(tables / "findings.parquet"), findings, check_exact=False
    )


@pytest.mark.slow
def test_reproduce_resumes_interrupted_run(tmp_path, monkeypatch):
    import tomllib

    import depthcurse.train as train_module
    from depthcurse.study import reproduce, run_status

    text = MICRO.replace('variants = ["none", "midas"]', 'variants = ["none"]')
    recipe = parse_recipe(tomllib.loads(text))
    out = tmp_path / "results"
    folder = out / "runs" / "none-seed1"
    cfg = recipe.train_config("none", 1)
    cfg.progress = False
    cfg.checkpoint_interval = 10  # may differ on resume: it does not change the weights

    class Killed(Exception):
        pass

    original = train_module.Trainer.save

    def save_then_stop(self):
        path = original(self)
        if self.step >= 10:
            raise Killed
        return path

    with monkeypatch.context() as patch:
        patch.setattr(train_module.Trainer, "save", save_then_stop)
        with pytest.raises(Killed):
            train_module.train(cfg, folder)
    assert run_status(folder, recipe.train_config("none", 1)) == "partial"

    result = reproduce(recipe, out, progress=False, figures=False, echo=lambda text: None)
    assert {r.label: r.status for r in result.runs} == {"none-seed0": "trained", "none-seed1": "resumed"}
    assert "resumed from" in (folder / "train.log").read_text()
    assert run_status(folder, recipe.train_config("none", 1)) == "finished"


@pytest.mark.slow
def test_public_model_branch(tmp_path, capsys):
    import tomllib

    from depthcurse.findings import curse_of_depth
    from depthcurse.study import TableCollector, analyse_public

    text = MICRO.replace("[public]\nenabled = false", """[public]
enabled = true
[public.analysis]
n_prompts = 2
prompt_tokens = 16
batch_size = 2
block_size = 2
only = ["contributions"]
""")
    recipe = parse_recipe(tomllib.loads(text))
    collector = TableCollector()
    row = analyse_public(recipe, tmp_path, collector, echo=lambda text: None)
    # Not even transformers' GGUF bar writes carriage returns when stderr is not a terminal.
    assert "\r" not in capsys.readouterr().err
    assert row["label"] == "SmolLM2-135M-Instruct (Q4_1, dequantized)"
    assert row["n_layers"] == 30
    assert "Q4_1" in row["note"]

    tables = collector.tables()
    assert set(tables) == {"contributions"}
    assert set(tables["contributions"]["variant"]) == {"public"}
    assert tables["contributions"]["seed"].isna().all()
    assert tables["contributions"]["layer"].max() == 29

    models = pd.DataFrame([row])
    curse = curse_of_depth(tables, models, baseline="none")
    assert [f.key for f in curse] == ["curse_of_depth/all", "curse_of_depth/excluding_layer_0"]
    for finding in curse:
        assert finding.verdict.endswith("for the single model (no interval)")
        assert finding.estimate.n == 1
        assert finding.estimate.value > 0


def synthetic_models(labels):
    rows = [
        {"label": label, "variant": label.split("-seed")[0], "seed": int(label[-1]), "n_layers": 4,
         "step": 10}
        for label in labels
    ]
    table = pd.DataFrame(rows)
    table["seed"] = table["seed"].astype("Int64")
    return table


def test_curse_of_depth_ratio_hand_computed():
    from depthcurse.findings import curse_of_depth

    models = synthetic_models(["none-seed0", "none-seed1"])
    per_model = {"none-seed0": [4.0, 1.0, 0.5, 0.5], "none-seed1": [4.0, 1.0, 0.25, 0.25]}
    rows = [
        {"model": label, "layer": layer, "metric": "layer", "statistic": "mean", "value": value,
         "step": 10}
        for label, values in per_model.items()
        for layer, value in enumerate(values)
    ]
    # An earlier stage's rows (step 5) must not enter the final-checkpoint ratio.
    rows.append({"model": "none-seed0", "layer": 3, "metric": "layer", "statistic": "mean",
                 "value": 100.0, "step": 5})
    findings = curse_of_depth({"contributions": pd.DataFrame(rows)}, models, "none")
    by_key = {f.key: f for f in findings}
    # All layers: (0.5 + 0.5) / (4 + 1) = 0.2 and 0.5 / 5 = 0.1.
    assert by_key["curse_of_depth/all"].per_seed == pytest.approx([0.2, 0.1])
    # The seeds differ by a factor of 2, so on the log scale the 2-seed t interval
    # (12.7 standard errors each side) reaches above 1.
    assert by_key["curse_of_depth/all"].estimate.value == pytest.approx(math.sqrt(0.02))
    assert by_key["curse_of_depth/all"].verdict == "inconclusive"
    # Layer 0 excluded: layers 1..3 split into [1] and [3]: 0.5 and 0.25.
    assert by_key["curse_of_depth/excluding_layer_0"].per_seed == pytest.approx([0.5, 0.25])


def test_loss_vs_compute_paired_by_seed():
    from depthcurse.findings import compute_findings

    rows = []
    for variant, losses, fraction in (("none", [5.0, 5.2], 1.0), ("midas", [4.9, 5.1], 0.6)):
        for seed, loss in enumerate(losses):
            for step, share in ((5, 0.5), (10, 1.0)):
                rows.append({"variant": variant, "seed": seed, "kind": "eval", "step": step,
                             "loss": loss + (10 - step) * 0.1, "compute_fraction": fraction * share})
    curves = pd.DataFrame(rows)
    end, same = compute_findings(curves, "none", ["midas"])
    # The same 0.1 gain in both seeds: a zero-width interval below 0.
    assert end.per_seed == pytest.approx([-0.1, -0.1])
    assert end.verdict == "supported at end of training (lower loss)"
    assert "0.600 of the baseline's training FLOPs" in end.statement
    # At 0.6 of its compute the baseline is interpolated between steps 5 and 10.
    assert same.subject == "midas, equal compute"
    assert same.per_seed == pytest.approx([-0.5, -0.5])


def _eval_curves(points: dict[str, list[list[tuple[float, float]]]]) -> pd.DataFrame:
    """Build eval rows from {variant: per seed [(compute fraction, loss), ...]}."""
    rows = []
    for variant, seeds in points.items():
        for seed, curve in enumerate(seeds):
            for step, (fraction, loss) in enumerate(curve, start=1):
                rows.append({"variant": variant, "seed": seed, "kind": "eval", "step": step,
                             "loss": loss, "compute_fraction": fraction})
    return pd.DataFrame(rows)


def test_loss_verdicts_follow_their_intervals():
    from depthcurse.findings import compute_findings

    # End of training: differences -0.15 and +0.05, an interval around 0. At equal compute
    # (0.5 of the baseline's FLOPs) the baseline is at 5.5 and 5.91: differences -0.65
    # and -0.66, an interval far below 0.
    curves = _eval_curves({
        "none": [[(0.5, 5.5), (1.0, 5.0)], [(0.5, 5.91), (1.0, 5.2)]],
        "midas": [[(0.25, 6.0), (0.5, 4.85)], [(0.25, 6.1), (0.5, 5.25)]],
    })
    end, same = compute_findings(curves, "none", ["midas"])

    assert end.per_seed == pytest.approx([-0.15, 0.05])
    assert end.estimate.low < 0 < end.estimate.high
    assert end.verdict == "inconclusive at end of training (the interval contains 0)"
    assert same.per_seed == pytest.approx([-0.65, -0.66])
    assert same.estimate.high < 0
    assert same.verdict == "supported at equal compute (lower loss)"
    # Each statement prints only the interval its verdict reads.
    assert _fmt_interval(same.estimate) in same.statement
    assert _fmt_interval(same.estimate) not in end.statement
    assert _fmt_interval(end.estimate) in end.statement


def _fmt_interval(estimate: Estimate) -> str:
    return f"[{estimate.low:.3g}, {estimate.high:.3g}]"


def test_ratio_interval_stays_positive():
    from depthcurse.findings import curse_of_depth

    models = synthetic_models(["none-seed0", "none-seed1"])
    # Second half / first half: 0.4 / 2 = 0.2 and 3 / 2 = 1.5.
    per_model = {"none-seed0": [1.0, 1.0, 0.2, 0.2], "none-seed1": [1.0, 1.0, 1.5, 1.5]}
    rows = [
        {"model": label, "layer": layer, "metric": "layer", "statistic": "mean", "value": value,
         "step": 10}
        for label, values in per_model.items()
        for layer, value in enumerate(values)
    ]
    findings = curse_of_depth({"contributions": pd.DataFrame(rows)}, models, "none")
    finding = next(f for f in findings if f.key == "curse_of_depth/all")

    assert finding.per_seed == pytest.approx([0.2, 1.5])
    assert mean_ci([0.2, 1.5]).low < 0, "the plain t interval of these ratios crosses 0"
    assert finding.estimate.low > 0
    assert finding.estimate.value == pytest.approx(math.sqrt(0.2 * 1.5))
    assert finding.verdict == "inconclusive"
    assert "geometric mean over seeds" in finding.statement


def test_suite_draws_no_bars_without_terminal(tiny_checkpoints, tiny_suite_options, capsys):
    import depthcurse
    from depthcurse.suite import run_suite

    model = depthcurse.load(tiny_checkpoints["a"])
    run_suite(model, only=["skip_effects", "perturbations"], options=tiny_suite_options)
    # Under pytest stderr is a capture buffer, not a terminal, like a redirected log.
    assert "\r" not in capsys.readouterr().err


def test_public_progress_estimates_time_left(tiny_checkpoints, tiny_suite_options, tmp_path):
    import depthcurse
    from depthcurse.cache import model_hash
    from depthcurse.study import RecordingCache, SuiteProgress
    from depthcurse.suite import run_suite

    model = depthcurse.load(tiny_checkpoints["a"])
    names = ("perturbations", "pruning", "symmetry")
    cache = RecordingCache(tmp_path / "cache")

    def run() -> list[str]:
        lines: list[str] = []
        progress = SuiteProgress("public model", names, cache, lines.append)
        run_suite(model, only=names, options=tiny_suite_options, cache=cache,
                  model_digest=model_hash(tiny_checkpoints["a"]), progress=progress)
        progress.finish()
        return lines

    lines = run()
    assert lines[0].startswith("[public model] perturbations (")
    assert lines[0].endswith(" s so far)")
    estimates = [line for line in lines if line.endswith("min left (estimate)")]
    # Perturbations weigh 3.2 of 3.5 cost units: 91% done after the first analysis.
    assert estimates[0].startswith("[public model] 91% done; about ")
    assert lines[-1] == "[public model] done"
    assert cache.read == set()

    # A rerun reads every table from the cache: nothing is timed, so nothing is estimated.
    lines = run()
    assert cache.read == set(names)
    assert not any("min left" in line for line in lines)
    assert lines[-1] == "[public model] done"


def test_report_groups_figures_under_headings(tmp_path):
    from types import SimpleNamespace

    from depthcurse.findings import depth_score_findings
    from depthcurse.report import write_report

    models = synthetic_models(["none-seed0", "none-seed1", "midas-seed0", "midas-seed1"])
    scores = {"none-seed0": 1.0, "none-seed1": 1.1, "midas-seed0": 1.5, "midas-seed1": 1.6}
    depth = pd.DataFrame([
        {"model": label, "prompt_set": "validation", "source": "layer_effect", "value": value,
         "step": 10}
        for label, value in scores.items()
    ])
    findings = depth_score_findings({"depth_score": depth}, models, "none", ["midas"])
    stems = ["skip_effects-none-seed0", "output_change-none-seed0", "contributions-over-step-midas-seed0",
             "depth_score-none-seed0", "contributions", "residual_norms", "skip_effects-difference"]
    (tmp_path / "figures").mkdir()
    pngs = []
    for stem in stems:
        pngs.append(tmp_path / "figures" / f"{stem}.png")
        pngs[-1].write_bytes(b"not a real png")
    recipe = SimpleNamespace(name="micro", path=None, description="", variants=["none", "midas"],
                             baseline="none", seeds=[0, 1])
    runs = [SimpleNamespace(label=label, status="trained") for label in scores]
    report, page = write_report(tmp_path, recipe, runs, models, findings, pngs, "", {"all": 60.0})

    text = report.read_text()
    findings_part, figures_part = text.split("## Figures")
    # The depth score is defined where the report first shows it, with its range.
    assert "centre of mass of the layer-skip effects" in findings_part
    assert "L = 4 layers, so their scores run from 0 to 2" in findings_part
    lines = figures_part.splitlines()
    headings = [line for line in lines if line.startswith("### ")]
    assert headings == ["### Residual stream norms", "### Relative contributions",
                        "### Layer skipping", "### Depth score"]
    images = [line for line in lines if line.startswith("![")]
    assert [line.split("]")[0][2:] for line in images] == [
        "residual_norms", "contributions", "contributions-over-step-midas-seed0",
        "skip_effects-difference", "skip_effects-none-seed0", "output_change-none-seed0",
        "depth_score-none-seed0",
    ]
    # Every figure has a one-line caption in italics right under it.
    for index, line in enumerate(lines):
        if line.startswith("!["):
            assert lines[index + 2].startswith("*"), line
            assert lines[index + 2].endswith("*"), line
    assert "midas-seed0, one line per checkpoint step." in figures_part
    assert "more use of depth" in figures_part
    assert "<figcaption>Mean L2 norm of the residual stream" in page.read_text()
