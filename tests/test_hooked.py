"""Hooked-model loading of our checkpoints."""

import pytest
import torch

import depthcurse
from depthcurse.checkpoint import save_checkpoint
from depthcurse.hooked import LoadError
from depthcurse.model import DepthcurseLM

# Float32 eager mode: the bridge runs transformers' eager attention while our
# model uses SDPA; op reordering moves values by a few ulp, far below 5e-5.
PARITY_ATOL = 5e-5


@pytest.mark.parametrize("ln_scaling", [False, True])
def test_bridge_matches_training_model(small_config, tmp_path, ln_scaling):
    model = DepthcurseLM(small_config.replace(ln_scaling=ln_scaling)).eval()
    save_checkpoint(tmp_path / "c", model)
    bridge = depthcurse.load(tmp_path / "c")
    x = torch.randint(0, small_config.vocab_size, (2, 12))
    logits, cache = bridge.run_with_cache(x)
    ours = {}
    with torch.no_grad():
        reference = model(x, residuals=ours)
    torch.testing.assert_close(logits, reference, atol=PARITY_ATOL, rtol=0)
    for layer in range(small_config.n_layers):
        for kind in ("pre", "mid", "post"):
            name = f"blocks.{layer}.hook_resid_{kind}"
            torch.testing.assert_close(cache[name], ours[name], atol=PARITY_ATOL, rtol=0)
    assert bridge.depthcurse_info.kind == "depthcurse"
    assert bridge.depthcurse_info.weight_processing is False


def test_missing_source_named(tmp_path):
    with pytest.raises(LoadError, match="nothing-here"):
        depthcurse.load(tmp_path / "nothing-here")
