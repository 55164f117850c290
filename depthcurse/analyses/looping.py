"""Inference-time looping: run layers [start, end) r times in a row.

Kapl et al. 2026 (arXiv 2602.16490) report that looping the middle block of a
depth-grown model at inference, a model never trained to loop, helps some
reasoning tasks. `looped(model, start, end, r)` is the surgery context (the
second and later passes use deep copies of the block's layers); `loop_block`
measures, for each r, the held-out next-token NLL against r = 1,

    delta_nll(r) = mean NLL_r − mean NLL_1   (nats/token, position 0 excluded by default),

and the value of any evaluation function `evaluate(model) -> float | dict`
called inside the context, so task accuracies can be reported the same way.

Like all layer-list surgery, looping acts on every position, position 0 included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd

from depthcurse.analyses.engine import (
    batches_of,
    decoder_layers,
    model_label,
    model_note,
    next_token_nll,
    prompt_set_name,
)
from depthcurse.analyses.perturbations import forward_logits
from depthcurse.analyses.surgery import layer_order, looped_order


@contextmanager
def looped(model: Any, start: int, end: int, repeats: int) -> Iterator[Any]:
    """Run layers [start, end) `repeats` times inside the block; restore the model on exit."""
    order = looped_order(len(decoder_layers(model)), start, end, repeats)
    with layer_order(model, order):
        yield model


def _mean_nll(model: Any, batches: list[Any], exclude_pos0: bool) -> float:
    total, count = 0.0, 0
    for ids, mask in batches:
        nll, scored = next_token_nll(forward_logits(model, ids, mask), ids, mask, exclude_pos0=exclude_pos0)
        total += float(nll.sum())
        count += int(scored.sum())
    return total / max(count, 1)


def loop_block(
    model: Any,
    prompts: Any,
    start: int,
    end: int,
    *,
    repeats: Sequence[int] = (1, 2, 3),
    evaluate: Callable[[Any], float | dict[str, float]] | None = None,
    batch_size: int = 8,
    exclude_pos0: bool = True,
) -> pd.DataFrame:
    """Return NLL, Δ NLL against one pass, and `evaluate`'s metrics for each repeat count."""
    n_layers = len(decoder_layers(model))
    looped_order(n_layers, start, end, 1)  # validates the span before any forward
    batches = batches_of(prompts, batch_size)
    baseline = _mean_nll(model, batches, exclude_pos0)
    rows = []
    for repeat in repeats:
        with looped(model, start, end, repeat):
            nll = _mean_nll(model, batches, exclude_pos0)
            rows += [(repeat, "nll", nll), (repeat, "delta_nll", nll - baseline)]
            if evaluate is not None:
                scores = evaluate(model)
                if not isinstance(scores, dict):
                    scores = {"evaluation": float(scores)}
                rows += [(repeat, name, float(value)) for name, value in scores.items()]
    table = pd.DataFrame(rows, columns=["repeats", "metric", "value"])
    table.insert(0, "model", model_label(model))
    table.insert(1, "prompt_set", prompt_set_name(prompts))
    table["start"] = start
    table["end"] = end
    table["n_layers"] = n_layers
    table["exclude_pos0"] = exclude_pos0
    table["note"] = model_note(model)
    return table
