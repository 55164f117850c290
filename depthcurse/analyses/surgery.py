"""Context managers that change which decoder layers a model runs, and restore it on exit.

`layer_order(model, order)` replaces the model's layer list by the layers at
`order` (indices into the current list): omitting an index removes that layer,
listing it twice runs it twice. The second and later occurrences are deep
copies, so hooks, caches and any in-place change on one occurrence cannot reach
another. On exit, also when the body raises, the original module list and the
config's layer count are put back, so a clean forward gives the same logits bit
for bit. The helpers below build the usual orders (remove, swap, reverse, loop).

Layer-list surgery acts on every position, position 0 included: a reordered or
shortened network has no clean counterpart to keep position 0 on. Copies keep
their original hook names (`blocks.{i}`), so a `run_with_cache` inside a
surgery context stores a repeated layer's activations under one key.

`skipped(model, layer, part, positions)` is the hook-based intervention of
Csordás et al. 2025 (arXiv 2505.13898): the attention and/or MLP output of one
layer is set to zero at the given positions, so the layer's output equals its
input there (Δ = 0).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from jaxtyping import Bool
from torch import Tensor

from depthcurse.analyses.engine import decoder_layers, hf_model_of, unwrap_layer

PARTS = ("layer", "attn", "mlp")


def _check_order(order: Sequence[int], n_layers: int) -> list[int]:
    order = [int(i) for i in order]
    if not order:
        raise ValueError("layer order is empty; keep at least one layer")
    bad = [i for i in order if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layer indices {bad} are out of range for a model with {n_layers} layers")
    return order


@contextmanager
def layer_order(model: Any, order: Sequence[int]) -> Iterator[Any]:
    """Run `model` with its decoder layers in `order` inside the block; restore on exit."""
    hf = hf_model_of(model)
    layers = decoder_layers(model)
    original = list(layers)
    order = _check_order(order, len(original))
    config = hf.config
    saved_count = config.num_hidden_layers
    saved_types = getattr(config, "layer_types", None)
    bridge_cfg = getattr(model, "cfg", None)
    saved_bridge_count = getattr(bridge_cfg, "n_layers", None)

    seen: set[int] = set()
    arranged = []
    for index in order:
        module = original[index]
        arranged.append(copy.deepcopy(module) if index in seen else module)
        seen.add(index)
    try:
        _set_modules(layers, arranged)
        config.num_hidden_layers = len(arranged)
        if saved_types is not None:
            config.layer_types = [saved_types[i] for i in order]
        if saved_bridge_count is not None:
            bridge_cfg.n_layers = len(arranged)
        yield model
    finally:
        _set_modules(layers, original)
        config.num_hidden_layers = saved_count
        if saved_types is not None:
            config.layer_types = saved_types
        if saved_bridge_count is not None:
            bridge_cfg.n_layers = saved_bridge_count


def _set_modules(layers: Any, modules: list[Any]) -> None:
    # Rebuild the ModuleList in place: the bridge's `blocks` and the transformers
    # model's `model.layers` are the same object, so both see the new order.
    layers._modules.clear()
    for position, module in enumerate(modules):
        layers._modules[str(position)] = module


def removed_order(n_layers: int, start: int, end: int | None = None) -> list[int]:
    """Return the layer order without layers [start, end) (one layer when `end` is None)."""
    end = start + 1 if end is None else end
    return [i for i in range(n_layers) if not start <= i < end]


def swapped_order(n_layers: int, first: int, second: int, size: int = 1) -> list[int]:
    """Return the layer order with the `size`-layer spans at `first` and `second` exchanged."""
    order = list(range(n_layers))
    a, b = list(range(first, first + size)), list(range(second, second + size))
    if set(a) & set(b):
        raise ValueError(f"spans at {first} and {second} of size {size} overlap")
    for i, j in zip(a, b, strict=True):
        order[i], order[j] = order[j], order[i]
    return order


def reversed_order(n_layers: int, start: int, end: int) -> list[int]:
    """Return the layer order with layers [start, end) reversed."""
    order = list(range(n_layers))
    order[start:end] = order[start:end][::-1]
    return order


def looped_order(n_layers: int, start: int, end: int, repeats: int) -> list[int]:
    """Return the layer order that runs layers [start, end) `repeats` times in a row."""
    if not 0 <= start < end <= n_layers:
        raise ValueError(f"loop span [{start}, {end}) is not inside 0..{n_layers}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    return [*range(start), *list(range(start, end)) * repeats, *range(end, n_layers)]


@contextmanager
def skipped(
    model: Any,
    layer: int,
    part: str = "layer",
    positions: Bool[Tensor, "batch pos"] | None = None,
) -> Iterator[Any]:
    """Zero layer `layer`'s attention and/or MLP output at `positions` inside the block.

    `part` is "layer" (both), "attn" or "mlp". `positions` defaults to every
    position except 0. The forward hooks are removed on exit, also on error.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} is out of range for a model with {len(layers)} layers")
    decoder = unwrap_layer(layers[layer])

    def zero_output(module: Any, args: Any, output: Any) -> Any:
        tensor = output[0] if isinstance(output, tuple) else output
        if positions is None:
            keep = tensor.new_zeros(tensor.shape[:2])
            keep[:, 0] = 1
        else:
            keep = (~positions.to(tensor.device)).to(tensor.dtype)
        tensor = tensor * keep[..., None]
        return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

    targets = {"layer": ("self_attn", "mlp"), "attn": ("self_attn",), "mlp": ("mlp",)}[part]
    handles = []
    try:
        for name in targets:
            handles.append(getattr(decoder, name).register_forward_hook(zero_output))
        yield model
    finally:
        for handle in handles:
            handle.remove()
