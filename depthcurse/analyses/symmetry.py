"""Mirror symmetry of layer-similarity matrices.

Depth growth that copies middle layers (LIDAS, Kapl et al. 2025, arXiv
2512.08819) is reported to leave mirror-symmetric weight structure. For a
layer × layer similarity matrix S and the anti-identity J (ones on the
anti-diagonal), (J S J)[i, j] = S[L−1−i, L−1−j] mirrors S about the centre, and

    asymmetry = ‖S − J S J‖_F / ‖S‖_F,

which is 0 for a mirror-symmetric S and at most 2. It is reported over all
layers ("all") and over the middle blocks ("middle": layers b..L−b−1, with
block size b from the growth history or given).

`weight_similarity` builds S from the cosine similarity of one module's
flattened weights (q, k, v, o, gate, up, down) or of all of them concatenated,
read per layer by `depthcurse.analyses.layer_similarity.layer_weights`. The
similarity of concatenated weights is computed from the sum of the modules' Gram
matrices (`weight_grams`), so no concatenated copy of the weights is made.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from depthcurse.analyses.engine import ArchitectureError, model_label, model_note
from depthcurse.analyses.layer_similarity import gram_cosines, weight_grams

# The names of the symmetry table's `matrix` column, and the `layer_weights` module each reads.
MODULES = {
    "q": "W_Q",
    "k": "W_K",
    "v": "W_V",
    "o": "W_O",
    "gate": "gate",
    "up": "up",
    "down": "down",
}


def mirror_asymmetry(matrix: np.ndarray) -> float:
    """Return ‖S − J S J‖_F / ‖S‖_F for a square matrix S."""
    s = np.asarray(matrix, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"similarity matrix must be square, got shape {s.shape}")
    norm = np.linalg.norm(s)
    if norm == 0:
        return float("nan")
    return float(np.linalg.norm(s - s[::-1, ::-1]) / norm)


def weight_similarity(model: Any, module: str = "all") -> np.ndarray:
    """Return the L × L cosine similarity of each layer's flattened `module` weights (float64).

    `model` is anything `layer_weights` reads: a `TransformerBridge`, a `DepthcurseLM`,
    a transformers Llama-style causal LM or a state dict with transformers' Llama names.
    Module "all" concatenates the seven weight matrices of each layer.
    """
    _check_module(module)
    names = list(MODULES.values()) if module == "all" else [MODULES[module]]
    return _similarity(weight_grams(model, names), module)


def _check_module(module: str) -> None:
    if module != "all" and module not in MODULES:
        raise ValueError(f"module must be 'all' or one of {sorted(MODULES)}, got {module!r}")


def _similarity(grams: dict[str, torch.Tensor], module: str) -> np.ndarray:
    """Return the cosines of one module's weights, or of all modules' concatenated weights."""
    gram = sum(grams.values()) if module == "all" else grams[MODULES[module]]
    return gram_cosines(gram).cpu().numpy()


def _label_and_note(source: Any) -> tuple[str, str]:
    """Return the `model` and `note` columns for a model. A state dict has neither."""
    if isinstance(source, dict):
        return "", ""
    try:
        return model_label(source), model_note(source)
    except ArchitectureError:  # a DepthcurseLM has no transformers model inside to name it
        return type(source).__name__, ""


def symmetry_scores(
    source: Any,
    *,
    block_size: int | None = None,
    modules: tuple[str, ...] = ("all", *MODULES),
) -> pd.DataFrame:
    """Return the mirror asymmetry of similarity matrices, over all layers and the middle blocks.

    `source` is a model or a state dict (weight similarity per module in `modules`,
    see `weight_similarity`) or one square similarity matrix. Without a block size
    (given, or from the growth history of a model) only the "all" region is reported.
    """
    if isinstance(source, np.ndarray | torch.Tensor):
        matrices = {"matrix": np.asarray(source, dtype=np.float64)}
        label, note = "", ""
    else:
        for module in modules:
            _check_module(module)
        grams = weight_grams(source)
        matrices = {m: _similarity(grams, m) for m in modules}
        label, note = _label_and_note(source)
        if block_size is None and getattr(source, "depthcurse_info", None) is not None:
            from depthcurse.analyses.perturbations import block_size_of

            try:
                block_size = block_size_of(source)
            except ValueError:
                block_size = None
    rows = []
    for name, matrix in matrices.items():
        rows.append((name, "all", mirror_asymmetry(matrix)))
        n = matrix.shape[0]
        if block_size is not None and n - 2 * block_size >= 2:
            middle = matrix[block_size : n - block_size, block_size : n - block_size]
            rows.append((name, "middle", mirror_asymmetry(middle)))
    table = pd.DataFrame(rows, columns=["matrix", "region", "value"])
    table.insert(0, "model", label)
    table["metric"] = "mirror_asymmetry"
    table["block_size"] = block_size
    table["note"] = note
    return table
