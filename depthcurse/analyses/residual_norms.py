"""Residual-stream norms per layer, for one model or across a run's checkpoints.

For every selected token (real tokens, position 0 excluded by default) the
analysis takes the L2 norms

    norm_h = ‖h_l‖  for l = 0..L (l = L is the final residual, the final norm's input)
    norm_a = ‖a_l‖  and  norm_m = ‖m_l‖  for l = 0..L-1

in float32, and reports their mean and max over all selected tokens of all
prompts. Notation: h_l residual input of layer l, a_l attention output, m_l
MLP output, h_{l+1} = h_l + a_l + m_l.

`residual_norms_over_run` repeats this for each checkpoint of a run and adds
the checkpoint's step, tokens seen, growth stage and depth, so one table shows
how the norms grow over training and across growth stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor

from depthcurse.analyses.common import Accumulator, Conventions, make_table

FORMULAS = {"norm_h": "‖h_l‖", "norm_a": "‖a_l‖", "norm_m": "‖m_l‖"}


class NormAccumulator:
    """Running mean and max of ‖h_l‖, ‖a_l‖, ‖m_l‖ over batches."""

    name = "residual_norms"

    def __init__(self) -> None:
        self.acc = Accumulator()

    def update(self, h: list[Tensor], a: list[Tensor], m: list[Tensor]) -> None:
        """Add one batch; each list contains (tokens, d_model) float32 tensors per layer."""
        for layer, resid in enumerate(h):
            self.acc.add("norm_h", layer, resid.norm(dim=-1))
        for layer, (attn, mlp) in enumerate(zip(a, m, strict=True)):
            self.acc.add("norm_a", layer, attn.norm(dim=-1))
            self.acc.add("norm_m", layer, mlp.norm(dim=-1))

    def table(self, conventions: Conventions) -> pd.DataFrame:
        rows = self.acc.rows()
        for row in rows:
            row["formula"] = FORMULAS[row["metric"]]
        table = make_table(rows, conventions, analysis=self.name)
        return table.sort_values(["metric", "layer", "statistic"], ignore_index=True)


def residual_norms(source: Any, prompts: Any = None, **options: Any) -> pd.DataFrame:
    """Return mean and max residual, attention and MLP output norms per layer.

    `source` is a `StreamStats` from `collect_stream`, or a hooked model; then
    `prompts` (a `PromptSet`, a token batch or (ids, mask)) is required and
    `options` go to `collect_stream`.
    """
    from depthcurse.analyses.stream import stats_for

    return stats_for(source, prompts, ("residual_norms",), options).residual_norms()


def run_checkpoints(run: str | Path | Sequence[str | Path]) -> list[Path]:
    """Return a run's complete checkpoint folders sorted by step.

    `run` is a list of checkpoint folders, or a folder searched at any depth
    for folders holding `depthcurse.json`, `config.json` and
    `model.safetensors`. Folders whose name starts with a dot (the temporary
    folders of an interrupted atomic write) are skipped.
    """
    from depthcurse.checkpoint import HF_CONFIG_FILE, META_FILE, WEIGHTS_FILE, read_metadata

    if isinstance(run, (str, Path)):
        root = Path(run)
        candidates = (
            [root] if (root / META_FILE).is_file() else [m.parent for m in root.rglob(META_FILE)]
        )
        folders = [
            folder
            for folder in candidates
            if not any(part.startswith(".") for part in folder.relative_to(root).parts)
            and all((folder / name).is_file() for name in (META_FILE, HF_CONFIG_FILE, WEIGHTS_FILE))
        ]
        if not folders:
            raise FileNotFoundError(
                f"no complete checkpoint (a folder with {META_FILE}, {HF_CONFIG_FILE} and "
                f"{WEIGHTS_FILE}) found under {root}; pass a run folder or checkpoint folders"
            )
    else:
        folders = [Path(folder) for folder in run]
    return sorted(folders, key=lambda folder: (read_metadata(folder).get("step", 0), str(folder)))


def residual_norms_over_run(
    run: str | Path | Sequence[str | Path],
    prompts: Any,
    *,
    dtype: Any = None,
    **options: Any,
) -> pd.DataFrame:
    """Return `residual_norms` for every checkpoint of a run, with step, stage and depth columns.

    Each checkpoint is loaded with `depthcurse.load` and released before the
    next. Columns added: `checkpoint`, `step`, `tokens_seen`, `stage` (the
    growth stage from the checkpoint's metadata) and `n_layers`.
    """
    import torch

    import depthcurse

    tables = []
    for folder in run_checkpoints(run):
        model = depthcurse.load(folder, dtype=dtype or torch.float32)
        meta = model.depthcurse_info.metadata
        table = residual_norms(model, prompts, **options)
        table.insert(1, "checkpoint", folder.name)
        table.insert(2, "step", meta.get("step"))
        table.insert(3, "tokens_seen", meta.get("tokens_seen"))
        table.insert(4, "stage", meta.get("stage"))
        table.insert(5, "n_layers", model.cfg.n_layers)
        tables.append(table)
        del model
    combined = pd.concat(tables, ignore_index=True)
    combined.attrs.update(tables[0].attrs)
    combined.attrs["model"] = [t.attrs["model"] for t in tables]
    return combined
