"""Tests of run_suite caching, the figure registry and figures drawn from saved tables."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from depthcurse import suite
from depthcurse.cache import ResultCache, model_hash
from depthcurse.figures import (
    figure_caption,
    load_results,
    make_figures,
    planned_figures,
    prepare_tables,
)
from depthcurse.plots.compare import relative_depth, resample
from depthcurse.plots.runs import training_curves

REPO = Path(__file__).resolve().parents[1]


def test_run_suite_second_call_computes_nothing(tiny_checkpoints, tiny_suite_options, tmp_path, monkeypatch):
    import depthcurse.analyses

    calls = {"stream": 0, "symmetry": 0}
    collect = depthcurse.analyses.collect_stream
    symmetry = suite._ANALYSIS_RUNNERS["symmetry"]

    def counting_collect(*args, **kwargs):
        calls["stream"] += 1
        return collect(*args, **kwargs)

    def counting_symmetry(*args, **kwargs):
        calls["symmetry"] += 1
        return symmetry(*args, **kwargs)

    monkeypatch.setattr(depthcurse.analyses, "collect_stream", counting_collect)
    monkeypatch.setitem(suite._ANALYSIS_RUNNERS, "symmetry", counting_symmetry)
    model = depthcurse.load(tiny_checkpoints["a"])
    cache = ResultCache(tmp_path / "cache")
    digest = model_hash(tiny_checkpoints["a"])
    only = ["residual_norms", "logit_lens", "symmetry"]

    first = suite.run_suite(model, only=only, options=tiny_suite_options, cache=cache, model_digest=digest)
    assert calls == {"stream": 1, "symmetry": 1}
    second = suite.run_suite(model, only=only, options=tiny_suite_options, cache=cache, model_digest=digest)
    assert calls == {"stream": 1, "symmetry": 1}, "a cached run must not compute again"
    for name in only:
        pd.testing.assert_frame_equal(first[name], second[name])

    changed = suite.SuiteOptions(**{**tiny_suite_options.to_dict(), "n_prompts": 3})
    suite.run_suite(model, only=["symmetry"], options=changed, cache=cache, model_digest=digest)
    assert calls["symmetry"] == 2, "other options are another cache key"


def test_every_suite_table_has_model_column(suite_tables):
    assert set(suite_tables["a"]) == set(suite.ANALYSES)
    for name, table in suite_tables["a"].items():
        assert "model" in table.columns, name
        assert set(table["model"]) == {"a"}, name
        assert not table.empty, name



def test_depth_score_future_prompts(tiny_checkpoints, tiny_suite_options):
    # The validation depth score runs its future-mode skips on the first future_prompts
    # of the n_prompts validation prompts, and on all of them when there are fewer.
    import depthcurse

    suite_model = depthcurse.load(tiny_checkpoints["a"])
    options = suite.SuiteOptions(
        **{**tiny_suite_options.to_dict(), "future_prompts": 2, "depth_score_per_level": False}
    )
    table = suite.run_suite(suite_model, only=["depth_score"], options=options)["depth_score"]
    assert set(table["prompt_set"]) == {"validation"}
    assert set(table["n_prompts"]) == {2}
    prompts = suite.suite_prompts(suite_model, options)
    assert len(prompts) == 4
    assert suite.first_prompts(prompts, 2).prompts == prompts.prompts[:2]
    assert suite.first_prompts(prompts, 9) is prompts


def test_suite_evaluation_fits_shots_to_context(tiny_checkpoints, tiny_suite_options):
    # eval_shots=None (the default) lets the suite's evaluation choose, per task, the most
    # shots up to 3 whose prompts fit the model's 64 positions, instead of running past them.
    import depthcurse

    model = depthcurse.load(tiny_checkpoints["a"])
    options = suite.SuiteOptions(**{**tiny_suite_options.to_dict(), "eval_shots": None})
    assert suite.SuiteOptions().eval_shots is None
    table = suite.run_suite(model, only=["evaluation"], options=options)["evaluation"]
    assert not table.empty
    assert table["shots"].between(0, 3).all()
    assert table["shots"].min() < 3, "3-shot prompts do not fit 64 positions"

@pytest.mark.slow
def test_figures_single_model_smoke(suite_tables, tmp_path):
    suite.save_tables(suite_tables["a"], tmp_path / "tables")
    paths = make_figures(tmp_path, tmp_path / "figures")
    stems = {p.stem for p in paths}
    expected = {
        "residual_norms", "contributions", "cosines", "lens", "layer_similarity",
        "weight_similarity", "skip_effects", "output_change", "depth_score", "perturbations",
        "pruning", "periodicity", "symmetry", "evaluation", "heldout_nll",
    }
    assert stems == expected
    for path in paths:
        assert path.stat().st_size > 1000, path
    assert {p.suffix for p in paths} == {".pdf", ".png"}
    assert len(paths) == 2 * len(expected)


@pytest.mark.slow
def test_figures_two_models_and_stages_smoke(suite_tables, tmp_path):
    both = {
        name: pd.concat([suite_tables["a"][name], suite_tables["b"][name]], ignore_index=True)
        for name in suite_tables["a"]
    }
    staged = suite_tables["a"]["contributions"]
    both["contributions"] = pd.concat(
        [both["contributions"]] + [staged.assign(model="a-grown", step=s) for s in (10, 20)],
        ignore_index=True,
    )
    paths = make_figures(both, tmp_path, formats=("png",))
    stems = {p.stem for p in paths}
    # Per-layer curves overlay all models; matrices come once per model plus a difference.
    assert "residual_norms" in stems
    assert "residual_norms-a" not in stems
    assert {"skip_effects-a", "skip_effects-b", "skip_effects-difference"} <= stems
    assert "layer_similarity-difference" in stems
    assert "contributions-over-step-a-grown" in stems
    assert "contributions-over-step-a" not in stems, "models without steps get no stage figure"


def test_stage_table_keeps_last_checkpoint(suite_tables):
    staged = pd.concat(
        [suite_tables["a"]["residual_norms"].assign(step=s) for s in (5, 9)], ignore_index=True
    )
    plans = planned_figures(prepare_tables({"residual_norms": staged}))
    tables = {stem: table for stem, _, table in plans}
    assert set(tables) == {"residual_norms-over-step-a", "residual_norms"}
    assert set(tables["residual_norms"]["step"]) == {9}


def test_caption_states_conventions(suite_tables):
    lens = suite_tables["a"]["logit_lens"].assign(note="GGUF weights stored as Q4_1")
    caption = " ".join(figure_caption(lens).split())
    assert "position 0 excluded" in caption
    assert "KL(lens ‖ final)" in caption
    assert "model dtype float32" in caption
    assert "weight processing off" in caption
    assert "a: GGUF weights stored as Q4_1" in caption
    assert "KL" not in figure_caption(suite_tables["a"]["residual_norms"])


def test_relative_depth_and_resample():
    table = pd.DataFrame({"model": ["x"] * 3 + ["y"] * 5, "layer": [0, 1, 2, 0, 1, 2, 3, 4]})
    np.testing.assert_allclose(relative_depth(table), [0, 1 / 3, 2 / 3, 0, 0.2, 0.4, 0.6, 0.8])
    matrix = np.arange(9.0).reshape(3, 3)
    grown = resample(matrix, 5)
    assert grown.shape == (5, 5)
    # Cell k starts at k / 5 and takes the layer l whose span [l / 3, (l + 1) / 3) contains it.
    np.testing.assert_array_equal(grown[0], [0, 0, 1, 1, 2])
    assert grown[-1, -1] == 8
    assert grown[2, 2] == 4



def test_difference_aligns_layer_spans():
    from depthcurse.plots.compare import MAX_GRID, common_grid, plot_difference

    assert common_grid(6, 8) == 24
    assert common_grid(30, 31) == 930, "lcm 930 fits MAX_GRID"
    assert common_grid(31, 37) == 37, f"lcm 1147 exceeds MAX_GRID={MAX_GRID}"
    first, second = np.arange(36.0).reshape(6, 6), np.arange(64.0).reshape(8, 8)
    fig = plot_difference(first, second, ("a", "b"), title="t")
    drawn_first = np.asarray(fig.axes[0].images[0].get_array())
    drawn_second = np.asarray(fig.axes[2].images[0].get_array()) + drawn_first
    assert drawn_first.shape == (24, 24)
    # Layer l of 6 covers cells 4l..4l+3, and layer l of 8 covers cells 3l..3l+2.
    np.testing.assert_array_equal(drawn_first[0], np.repeat(first[0], 4))
    np.testing.assert_array_equal(drawn_second[5], np.repeat(second[1], 3))
    assert fig.axes[0].get_xlabel().startswith("relative depth l / L")

def _residual_norm_rows(model: str, n_layers: int) -> pd.DataFrame:
    """Rows shaped like `residual_norms`: norm_h at h_0..h_L, norm_a at layers 0..L − 1."""
    rows = [{"model": model, "layer": layer, "metric": "norm_h"} for layer in range(n_layers + 1)]
    rows += [{"model": model, "layer": layer, "metric": "norm_a"} for layer in range(n_layers)]
    return pd.DataFrame(rows).assign(statistic="mean", value=1.0)


def test_relative_depth_one_convention():
    from depthcurse.plots.compare import RELATIVE_DEPTH_LABEL

    norms = _residual_norm_rows("x", 4)
    depth = relative_depth(norms)
    # The residual h_l and layer l share l / L, whichever metric the row belongs to.
    np.testing.assert_allclose(depth[norms["metric"] == "norm_h"], [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(depth[norms["metric"] == "norm_a"], [0, 0.25, 0.5, 0.75])
    # Each metric alone gives the same values as the whole table.
    alone = norms[norms["metric"] == "norm_a"]
    np.testing.assert_allclose(relative_depth(alone), [0, 0.25, 0.5, 0.75])

    lens = pd.DataFrame({"model": "x", "layer": range(5), "metric": "kl", "lens": "logit"})
    np.testing.assert_allclose(relative_depth(lens), [0, 0.25, 0.5, 0.75, 1])
    contributions = pd.DataFrame({"model": "x", "layer": range(4), "metric": "layer"})
    np.testing.assert_allclose(relative_depth(contributions), [0, 0.25, 0.5, 0.75])
    stated = contributions.iloc[:2].assign(n_layers=4)
    np.testing.assert_allclose(relative_depth(stated), [0, 0.25])
    assert "l / L" in RELATIVE_DEPTH_LABEL


def test_overlay_curves_share_relative_depth():
    from depthcurse.figures import _curves, _lens_overlay
    from depthcurse.plots.compare import RELATIVE_DEPTH_LABEL

    norms = pd.concat([_residual_norm_rows("x", 4), _residual_norm_rows("y", 8)], ignore_index=True)
    fig = _curves(["norm_h", "norm_a"], "norms")(norms)
    h_panel, a_panel = fig.axes[:2]
    assert h_panel.get_xlabel() == RELATIVE_DEPTH_LABEL
    assert a_panel.get_xlabel() == RELATIVE_DEPTH_LABEL
    x_h = {line.get_label(): line.get_xdata() for line in h_panel.get_lines()}
    x_a = {line.get_label(): line.get_xdata() for line in a_panel.get_lines()}
    np.testing.assert_allclose(x_h["x"], [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(x_a["x"], [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(x_a["y"], np.arange(8) / 8)

    lens = pd.DataFrame({
        "model": "x", "layer": list(range(5)) * 3,
        "metric": np.repeat(["kl", "top5_overlap", "accuracy"], 5),
        "lens": "logit", "statistic": "mean", "value": 1.0,
    })
    fig = _lens_overlay(lens)
    assert fig.axes[0].get_xlabel() == RELATIVE_DEPTH_LABEL
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_xdata(), [0, 0.25, 0.5, 0.75, 1])


def _fake_run(folder: Path, cfg, records: list[dict]) -> Path:
    folder.mkdir(parents=True)
    info = {"config": {"growth": "midas", "seed": 1, "seq_len": 16}, "model_config": cfg.to_dict()}
    (folder / "run.json").write_text(json.dumps(info))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_training_curves_charge_each_depth(small_config, tmp_path):
    from depthcurse.growth import flops_per_token

    records = [
        {"kind": "train", "step": 1, "tokens": 100, "stage": 0, "depth": 1, "loss": 4.0},
        {"kind": "growth", "step": 1, "stage": 1, "depth_before": 1, "depth_after": 3},
        {"kind": "eval", "step": 2, "tokens": 200, "stage": 1, "val_loss": 3.5},
        {"kind": "train", "step": 3, "tokens": 300, "stage": 1, "depth": 3, "loss": 3.0},
    ]
    run = _fake_run(tmp_path / "results" / "runs" / "midas-s1", small_config, records)
    table = training_curves([run], root=tmp_path / "results")
    shallow, deep = flops_per_token(small_config, 1, 16), flops_per_token(small_config, 3, 16)
    assert list(table["kind"]) == ["train", "eval", "train"]
    assert list(table["depth"]) == [1, 3, 3]
    assert table["flops"].iloc[0] == pytest.approx(100 * shallow)
    assert table["flops"].iloc[1] == pytest.approx(100 * shallow + 100 * deep)
    assert table["flops"].iloc[2] == pytest.approx(100 * shallow + 200 * deep)
    assert set(table["run"]) == {"runs/midas-s1"}
    assert set(table["variant"]) == {"midas"}

    plans = planned_figures(prepare_tables({"training_curves": table}))
    assert [(stem, len(rows)) for stem, _, rows in plans] == [("loss_vs_compute", 3)]

    # make_figures finds run folders inside a results folder and draws loss against compute.
    paths = make_figures(tmp_path / "results", tmp_path / "figures", formats=("png",))
    assert [p.name for p in paths] == ["loss_vs_compute.png"]


def test_empty_results_folder_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .parquet tables"):
        load_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_results(tmp_path / "missing")


def test_make_figures_script(suite_tables, tmp_path):
    script = REPO / "figures" / "make_figures.py"
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": ""}
    empty = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert empty.returncode == 2
    assert "no .parquet tables" in empty.stderr

    suite.save_tables({"symmetry": suite_tables["a"]["symmetry"]}, tmp_path / "tables")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--out", str(tmp_path / "f")],
        capture_output=True, text=True, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["symmetry.pdf", "symmetry.png"]


# ---------------------------------------------------------------------------
# Layout: legends off the data, readable ticks, short labels


def _render(fig):
    """Draw `fig` on an Agg canvas and return its renderer, for window extents."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _data_boxes(fig, renderer):
    """Return the display-space bounding box of every line's points and every bar."""
    from matplotlib.transforms import Bbox

    boxes = []
    for ax in fig.axes:
        for line in ax.lines:
            xy = np.asarray(line.get_xydata(), dtype=float)
            xy = xy[np.isfinite(xy).all(axis=1)]
            if len(xy):
                points = line.get_transform().transform(xy)
                boxes.append(Bbox.from_extents(*points.min(axis=0), *points.max(axis=0)))
        boxes += [patch.get_window_extent(renderer) for patch in ax.patches]
    return boxes


def assert_legends_clear_of_data(fig):
    import matplotlib.pyplot as plt

    renderer = _render(fig)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + fig.legends
    assert legends, "the figure has no legend to check"
    boxes = _data_boxes(fig, renderer)
    assert boxes, "the figure has no plotted data"
    for legend in legends:
        extent = legend.get_window_extent(renderer)
        covered = [box for box in boxes if extent.overlaps(box)]
        assert not covered, f"legend {[t.get_text() for t in legend.get_texts()]} covers data"
    plt.close(fig)


def _many_models(table, n=8):
    return pd.concat([table.assign(model=f"run-seed{i}") for i in range(n)], ignore_index=True)


def test_legends_clear_of_data(suite_tables):
    from depthcurse.figures import _curves, _lens_overlay
    from depthcurse.plots import interventions, lens, runs, stream

    a = suite_tables["a"]
    both_lenses = pd.concat([a["logit_lens"], a["tuned_lens"]], ignore_index=True)
    staged = pd.concat([a["residual_norms"].assign(step=s) for s in (5, 9)], ignore_index=True)
    figures = {
        "lens": lens.plot_lens(both_lenses),
        "lens overlay": _lens_overlay(_many_models(both_lenses)),
        "residual norms": stream.plot_residual_norms(a["residual_norms"]),
        "norms overlay": _curves(["norm_h", "norm_a", "norm_m"], "norms", True)(
            _many_models(a["residual_norms"])
        ),
        "contributions": stream.plot_contributions(a["contributions"]),
        "cosines": stream.plot_cosines(a["cosines"]),
        "norms over steps": runs.plot_over_stages(staged, ["norm_h"], by="step"),
        "periodicity": interventions.plot_periodicity(a["periodicity"]),
        "output change": interventions.plot_output_change(a["skip_effects"]),
        "symmetry": interventions.plot_symmetry(a["symmetry"]),
        "evaluation": runs.plot_evaluation(a["evaluation"]),
        "loss vs compute": runs.plot_loss_vs_compute(_loss_curves(4e11, 3.3e12)),
    }
    for name, fig in figures.items():
        try:
            assert_legends_clear_of_data(fig)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from err


def _loss_curves(first: float, last: float) -> pd.DataFrame:
    """Return training curves of two variants whose FLOPs run from `first` to `last`."""
    rows = []
    for variant, share in (("none", 1.0), ("midas", 0.8)):
        for step, flops in enumerate(np.geomspace(first, last * share, 12), start=1):
            for kind in ("train", "eval"):
                rows.append({"run": f"{variant}-seed0", "variant": variant, "kind": kind,
                             "step": step, "loss": 6.0 - 0.2 * step, "flops": flops})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("first", "last"), [(1.5e11, 3.3e12), (4e11, 3.3e12), (2.1e12, 4.9e12), (1e7, 3.3e12)]
)
def test_loss_vs_compute_ticks_do_not_overlap(first, last):
    import matplotlib
    import matplotlib.pyplot as plt

    from depthcurse.figures import PAPER_STYLE
    from depthcurse.plots.runs import plot_loss_vs_compute

    with matplotlib.rc_context(PAPER_STYLE):
        fig = plot_loss_vs_compute(_loss_curves(first, last))
        renderer = _render(fig)
    for ax in fig.axes:
        inside = ax.get_window_extent(renderer)
        boxes = sorted(
            (
                label.get_window_extent(renderer)
                for label in ax.get_xticklabels(which="both")
                if label.get_visible() and label.get_text()
            ),
            key=lambda box: box.x0,
        )
        # Labels of ticks outside the view keep their text but are not drawn.
        boxes = [box for box in boxes if inside.x0 - 1 <= (box.x0 + box.x1) / 2 <= inside.x1 + 1]
        assert boxes, "the FLOPs axis has no tick label"
        for left, right in zip(boxes, boxes[1:], strict=False):
            assert left.x1 <= right.x0, f"tick labels overlap on a {first:g}..{last:g} axis"
    plt.close(fig)


def test_periodicity_legend_short_labels(suite_tables):
    from depthcurse.plots.interventions import plot_periodicity

    table = suite_tables["a"]["periodicity"]
    assert table["sequence"].str.startswith("a | ").all(), "sequence names start with the label"
    fig = plot_periodicity(table)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert [t.split(" (")[0] for t in texts] == ["attn", "mlp", "layer"]
    assert fig.axes[0].get_title() == "a"


def test_short_labels_drop_shared_parts():
    from depthcurse.plots.layout import short_labels

    names = ["/r/midas/step-3 | mean | attn", "/r/midas/step-3 | mean | mlp"]
    assert short_labels(names) == ["attn", "mlp"]
    assert short_labels(["x | mean | attn"]) == ["attn"]
    assert short_labels(["a | attn", "b | attn"]) == ["a", "b"]


def test_figure_descriptions_cover_registry():
    from depthcurse.figures import _registry, describe_figure

    for spec in _registry():
        assert spec.heading, spec.name
        assert spec.caption, spec.name
        assert describe_figure(spec.name).caption == spec.caption
    staged = describe_figure("lens-over-stage-midas-seed0")
    assert staged.heading == "Logit and tuned lens"
    assert staged.caption.startswith("midas-seed0, one line per checkpoint stage. ")
    assert describe_figure("skip_effects-difference").caption.startswith("The two models")
    assert describe_figure("unknown").heading == "Other figures"


def test_legend_outside_gathers_panels():
    from matplotlib.figure import Figure

    from depthcurse.plots.layout import legend_outside

    fig = Figure()
    left, right = fig.subplots(1, 2)
    left.plot([0, 1], [0, 1], label="text")
    right.plot([0, 1], [1, 0], label="code")
    right.plot([0, 1], [0, 0], label="text")
    legend = legend_outside(right, gather=[left])
    assert [t.get_text() for t in legend.get_texts()] == ["text", "code"]
    assert left.get_legend() is None


def test_intervention_panels_have_titles(suite_tables):
    from depthcurse.plots.interventions import plot_periodicity, plot_pruning, plot_symmetry

    fig = plot_pruning(suite_tables["a"]["pruning"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:3] == [
        "block influence",
        "loss increase when the layer is removed",
        "angular distance of h_l and h_l+n",
    ]
    fig = plot_symmetry(suite_tables["a"]["symmetry"])
    assert fig.axes[0].get_title().startswith("Mirror asymmetry (0 = symmetric")
    fig = plot_periodicity(suite_tables["a"]["periodicity"])
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert all("(period " in text or "(no dominant period)" in text for text in texts)
    assert not any("period none" in text for text in texts)


def test_comparison_figures_name_axes_and_metrics(suite_tables):
    from depthcurse.figures import _skip_difference
    from depthcurse.plots.compare import plot_relative_depth

    both = {
        name: pd.concat([suite_tables["a"][name], suite_tables["b"][name]], ignore_index=True)
        for name in ("skip_effects", "contributions")
    }
    fig = _skip_difference(both["skip_effects"], ("a", "b"))
    assert fig.axes[0].get_xlabel().endswith("effect at layer j")
    assert fig.axes[0].get_ylabel().endswith("skipped layer s")
    fig = plot_relative_depth(both["contributions"], ["attn", "layer"])
    assert [ax.get_title() for ax in fig.axes[:2]] == ["attention ‖a‖/‖h‖", "layer ‖a+m‖/‖h‖"]
    assert fig.axes[0].get_ylabel() == "mean over tokens"


def test_depth_score_ticks_read_as_words():
    from depthcurse.plots.interventions import plot_depth_scores

    table = pd.DataFrame({
        "prompt_set": ["validation", "variable_assignment/level=2"],
        "source": ["layer_effect", "layer_effect"],
        "value": [3.0, 4.0], "ci_low": [2.5, 3.5], "ci_high": [3.5, 4.5],
    })
    fig = plot_depth_scores(table)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["validation", "variable assignment, level 2"]
    assert fig.axes[0].get_title() == "from skip effects on later layers"


def test_depth_score_caption_defines_sources():
    from depthcurse.figures import describe_figure

    caption = describe_figure("depth_score").caption
    assert "From layer effects, e_s is the mean relative change" in caption
    assert "From output effects, e_s is ‖p_skip − p_clean‖₂" in caption


def test_evaluation_legend_of_many_models():
    # Ten models in two forms: the legend lists models and forms apart (10 + 2 + chance),
    # and constrained layout must still fit the axes next to it.
    import io
    import warnings

    from depthcurse.plots import runs

    rows = [
        {"model": f"variant{m}-seed0", "task": task, "form": form, "level": level,
         "accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "chance": 0.1}
        for m in range(10) for task in ("induction", "arithmetic")
        for form in ("words", "symbols") for level in (1, 2, 3)
    ]
    fig = runs.plot_evaluation(pd.DataFrame(rows))
    labels = [text.get_text() for text in fig.axes[-1].get_legend().get_texts()]
    assert len(labels) == 13
    assert "form: words" in labels
    assert "variant9-seed0" in labels
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*constrained_layout not applied.*")
        fig.savefig(io.BytesIO(), format="png", bbox_inches="tight")
    assert fig.axes[0].get_position().height > 0.3
