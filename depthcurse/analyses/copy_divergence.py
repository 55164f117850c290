"""Copy divergence: how far each layer copied by depth growth has moved from its source.

For every layer that a growth event inserted as a copy (growth history
entries `new_layers`, each with the copy's `id` and its `source_id`), and for
each module type M (W_Q, W_K, W_V, W_O, gate, up, down), at every checkpoint
of a run where both layers exist:

    cosine            = cos(vec(M_copy), vec(M_source))
    relative_distance = ‖M_copy - M_source‖ / ‖M_source‖

computed in float32 from the checkpoint's `model.safetensors`. A layer's
position at a checkpoint comes from the metadata's `layer_ids` (rebuilt from
the growth history when absent). Right after growth the copy equals its source
(cosine 1, distance 0); copies that stay near 1 until the end of training
compute nearly the same function as their source, which matters when reading
every other per-layer analysis of those layers.

Norm gains are left out because LayerNorm Scaling folds a position-dependent
factor into them, so a copy's gains differ from its source's by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import safe_open

from depthcurse.analyses.common import ZERO_NORM, Conventions, make_table
from depthcurse.analyses.layer_similarity import MODULES, layer_weights
from depthcurse.analyses.residual_norms import run_checkpoints
from depthcurse.checkpoint import WEIGHTS_FILE, read_metadata
from depthcurse.growth import Lineage


def checkpoint_layer_ids(meta: dict[str, Any]) -> list[int]:
    """Return the id of each layer of a checkpoint, from `layer_ids` or the growth history."""
    if meta.get("layer_ids") is not None:
        return list(meta["layer_ids"])
    history = meta.get("growth_history") or []
    n_layers = meta["model_config"]["n_layers"]
    if not history:
        return list(range(n_layers))
    return Lineage.from_history(history[0]["depth_before"], history).layer_ids


def read_layer_weights(folder: Path) -> dict[str, list[torch.Tensor]]:
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as file:
        suffixes = tuple(MODULES.values())
        state = {name: file.get_tensor(name) for name in file.keys() if name.endswith(suffixes)}
    return layer_weights(state)


def copy_divergence(run: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """Return cosine and relative distance of every copied layer to its source, per checkpoint.

    `run` is a run folder (its checkpoints are found by their `depthcurse.json`)
    or a list of checkpoint folders. One row per checkpoint x copied layer x
    module x metric, with the copy's and source's positions (`layer`,
    `source_layer`), ids, and the step at which the copy was made.
    """
    folders = run_checkpoints(run)
    rows = []
    for folder in folders:
        meta = read_metadata(folder)
        copies = [
            (new, event)
            for event in meta.get("growth_history") or []
            for new in event["new_layers"]
        ]
        if not copies:
            continue
        position = {layer_id: index for index, layer_id in enumerate(checkpoint_layer_ids(meta))}
        weights = read_layer_weights(folder)
        for new, event in copies:
            if new["id"] not in position or new["source_id"] not in position:
                continue
            layer, source = position[new["id"]], position[new["source_id"]]
            for module, per_layer in weights.items():
                copy_w = per_layer[layer].float().flatten()
                source_w = per_layer[source].float().flatten()
                source_norm = source_w.norm().clamp_min(ZERO_NORM)
                values = {
                    "cosine": torch.dot(copy_w, source_w)
                    / (copy_w.norm().clamp_min(ZERO_NORM) * source_norm),
                    "relative_distance": (copy_w - source_w).norm() / source_norm,
                }
                for metric, value in values.items():
                    rows.append(
                        {
                            "layer": layer,
                            "metric": metric,
                            "statistic": "value",
                            "value": float(value),
                            "n_tokens": 0,
                            "module": module,
                            "checkpoint": folder.name,
                            "step": meta.get("step"),
                            "stage": meta.get("stage"),
                            "layer_id": new["id"],
                            "source_layer": source,
                            "source_id": new["source_id"],
                            "copied_at_step": event.get("step"),
                        }
                    )
    if not rows:
        raise ValueError(
            f"no checkpoint among {[str(f) for f in folders]} has a growth history with copied "
            "layers; copy divergence needs checkpoints of a depth-grown run"
        )
    root = Path(run).name if isinstance(run, (str, Path)) else folders[-1].parent.name
    conventions = Conventions(
        model=root,
        exclude_pos0=False,
        prepend_bos=None,
        dtype="float32",
        weight_processing=False,
        note="weights read from each checkpoint's model.safetensors",
    )
    table = make_table(rows, conventions, analysis="copy_divergence")
    return table.sort_values(["step", "layer", "module", "metric"], ignore_index=True)
