"""The study report: the same content as Markdown and as one self-contained HTML file."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd

from depthcurse.findings import Finding

SECTION_TITLES = {
    "curse_of_depth/all": "Curse of depth, all layers",
    "curse_of_depth/excluding_layer_0": "Curse of depth, layer 0 excluded",
    "depth_score": "Depth score",
    "periodicity": "Periodicity of attention contributions",
    "block_vs_layer_swaps": "Block swaps against layer swaps",
    "block_swaps_vs_baseline": "Block swaps against the baseline",
    "loss_vs_compute": "Held-out loss at the end of training and at equal compute",
}

VERDICT_NOTE = (
    "Intervals are 95% Student-t intervals over training seeds (n = number of seeds); a "
    "difference is paired by seed. Ratios are averaged as geometric means, with the t interval "
    "computed for their logarithms, so the interval stays above 0. A finding is *supported* "
    "when its interval lies on the side the question asks about, *not supported* when it lies "
    "on the other side, and *inconclusive* when it contains the reference value (1 for ratios, "
    "0 for differences). A finding that compares two ways names the comparison in its verdict. "
    "With 2 seeds the t interval is wide (12.7 standard errors each side), so most differences "
    "will read as inconclusive unless they are large and consistent."
)


def _blocks(
    out: Path,
    recipe: Any,
    runs: list[Any],
    models: pd.DataFrame,
    findings: list[Finding],
    figures: list[Path],
    figure_problem: str,
    timings: dict[str, float],
) -> list[tuple[str, Any]]:
    """Return the report as (kind, content) blocks: h1, h2, h3, p, ul, img (path, caption)."""
    blocks: list[tuple[str, Any]] = [("h1", f"Study {recipe.name}: do depth-grown transformers use their depth better?")]
    source = recipe.path if recipe.path is not None else "(in memory)"
    blocks.append(("p", f"Recipe {source}: {recipe.description}".strip()))
    statuses = ", ".join(f"{r.label} ({r.status})" for r in runs)
    blocks.append(
        ("p", f"Variants {', '.join(recipe.variants)} (baseline: {recipe.baseline}); seeds "
              f"{recipe.seeds}; runs in {out / 'runs'}: {statuses}.")
    )
    public = models[models["variant"] == "public"]
    if not public.empty:
        row = public.iloc[0]
        blocks.append(("p", f"Public model: {row['label']}, {row['n_layers']} layers. {row['note']}"))
    else:
        blocks.append(("p", "Public model: not analysed (switched off in the recipe)."))

    blocks.append(("h2", "Findings"))
    blocks.append(("p", VERDICT_NOTE))
    if not findings:
        blocks.append(("p", "No finding could be computed: the tables lack the analyses they need."))
    sections: dict[str, list[Finding]] = {}
    for finding in findings:
        sections.setdefault(finding.key, []).append(finding)
    for number, (key, items) in enumerate(sections.items(), start=1):
        blocks.append(("h3", f"{number}. {SECTION_TITLES.get(key, key)}"))
        blocks.append(("p", items[0].question))
        blocks.append(("ul", [f"**{f.verdict}**: {f.statement}" for f in items]))

    blocks.append(("h2", "Figures"))
    if figure_problem:
        blocks.append(("p", figure_problem))
    pngs = [f for f in figures if f.suffix == ".png"]
    blocks += _figure_blocks(pngs)
    if not pngs and not figure_problem:
        blocks.append(("p", "No figure was drawn."))

    blocks.append(("h2", "Tables"))
    blocks.append(
        ("p", f"Tidy tables, one file per analysis as parquet and CSV, in {out / 'tables'}; each "
              "row carries the variant and seed of its model (the public model has variant "
              "'public' and no seed). The residual-stream tables also hold the last checkpoint "
              "of every earlier growth stage (columns stage and step; the findings use the final "
              "checkpoint only); findings.csv holds the findings above.")
    )
    blocks.append(("h2", "Time"))
    blocks.append(("ul", [f"{name}: {seconds / 60:.1f} min" for name, seconds in timings.items()]))
    return blocks


def _figure_blocks(pngs: list[Path]) -> list[tuple[str, Any]]:
    """Return the figures as one h3 heading per analysis, each figure with its caption.

    Analyses follow the figure registry's order. Within one, figures that overlay every
    model come first, then one figure per model.
    """
    from depthcurse.figures import describe_figure

    described = sorted(
        ((describe_figure(png.stem), png) for png in pngs),
        key=lambda item: (item[0].order, "-" in item[1].stem, item[1].stem),
    )
    blocks: list[tuple[str, Any]] = []
    heading = None
    for description, png in described:
        if description.heading != heading:
            heading = description.heading
            blocks.append(("h3", heading))
        blocks.append(("img", (png, description.caption)))
    return blocks


def _inline_md_to_html(text: str) -> str:
    """Escape `text` and turn **bold** and *italic* spans into tags."""
    import re

    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"\*(.+?)\*", r"<em>\1</em>", escaped)


def render_markdown(blocks: list[tuple[str, Any]], out: Path) -> str:
    lines: list[str] = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + content, ""]
        elif kind == "p":
            lines += [content, ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in content] + [""]
        elif kind == "img":
            figure, caption = content
            lines += [f"![{figure.stem}]({figure.relative_to(out).as_posix()})", ""]
            if caption:
                lines += [f"*{caption}*", ""]
    return "\n".join(lines)


def render_html(blocks: list[tuple[str, Any]], title: str) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.45}"
        "img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}</style>",
        "</head><body>",
    ]
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline_md_to_html(content)}</p>")
        elif kind == "ul":
            items = "".join(f"<li>{_inline_md_to_html(item)}</li>" for item in content)
            parts.append(f"<ul>{items}</ul>")
        elif kind == "img":
            figure, caption = content
            data = base64.b64encode(figure.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(figure.stem)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption or figure.name)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    out: Path,
    recipe: Any,
    runs: list[Any],
    models: pd.DataFrame,
    findings: list[Finding],
    figures: list[Path],
    figure_problem: str,
    timings: dict[str, float],
) -> tuple[Path, Path]:
    """Write ``OUT/report.md`` and ``OUT/report.html`` (figures embedded as base64 PNG)."""
    blocks = _blocks(out, recipe, runs, models, findings, figures, figure_problem, timings)
    report = out / "report.md"
    report.write_text(render_markdown(blocks, out))
    page = out / "report.html"
    page.write_text(render_html(blocks, blocks[0][1]))
    return report, page
