"""Model and config: shapes, presets, and parity with transformers' LlamaForCausalLM."""

import pytest
import torch
from transformers import LlamaForCausalLM

from depthcurse.checkpoint import save_checkpoint
from depthcurse.config import PRESETS, ConfigError, ModelConfig, preset
from depthcurse.model import DepthcurseLM

# Float32 eager-mode tolerance: our RMSNorm, rotary and SDPA attention reorder a
# few float operations relative to transformers' eager kernels, which moves
# values by a few ulp (about 1e-7 relative); 5e-5 absolute leaves two orders of
# magnitude of room while still catching any real difference (a wrong rotary
# convention or missing norm gain shows up at 1e-2 or more).
PARITY_ATOL = 5e-5


def perturb_norms(model: DepthcurseLM) -> None:
    """Give the RMSNorm gains non-unit values so folding bugs cannot hide."""
    with torch.no_grad():
        for _name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(0.3 * torch.randn_like(param))


def test_tiny_preset_under_3m_params():
    assert PRESETS["tiny"].param_count() <= 3_000_000
    model = DepthcurseLM(PRESETS["tiny"])
    assert sum(p.numel() for p in model.parameters()) == PRESETS["tiny"].param_count()


def test_smollm_360m_shape():
    cfg = PRESETS["smollm-360m"]
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (32, 960, 15, 5, 49152)
    assert PRESETS["smollm-1.7b"].n_layers == 24
    assert PRESETS["smollm-1.7b"].d_model == 2048


def test_unknown_config_key_named():
    with pytest.raises(ConfigError, match="n_layer'"):
        ModelConfig.from_dict({"n_layer": 4})
    with pytest.raises(ConfigError, match="colour"):
        preset("tiny", colour="blue")
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        preset("huge")


def test_inconsistent_config_rejected():
    with pytest.raises(ConfigError, match="n_kv_heads=3"):
        ModelConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ConfigError, match="n_layers"):
        ModelConfig(n_layers=0)


def test_forward_shape_and_causality(small_config):
    model = DepthcurseLM(small_config).eval()
    x = torch.randint(0, small_config.vocab_size, (2, 10))
    logits = model(x)
    assert logits.shape == (2, 10, small_config.vocab_size)
    changed = x.clone()
    changed[:, 7] = (changed[:, 7] + 1) % small_config.vocab_size
    # Changing token 7 must not change predictions at positions 0..6.
    torch.testing.assert_close(model(changed)[:, :7], logits[:, :7])
    assert not torch.allclose(model(changed)[:, 7:], logits[:, 7:])


def test_too_long_input_rejected(small_config):
    model = DepthcurseLM(small_config)
    with pytest.raises(ValueError, match="max_seq_len=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_residual_identities(small_config):
    model = DepthcurseLM(small_config).eval()
    res = {}
    x = torch.randint(0, small_config.vocab_size, (2, 9))
    with torch.no_grad():
        model(x, residuals=res)
    for layer in range(small_config.n_layers):
        pre, mid, post = (res[f"blocks.{layer}.hook_resid_{k}"] for k in ("pre", "mid", "post"))
        torch.testing.assert_close(mid, pre + res[f"blocks.{layer}.hook_attn_out"], rtol=0, atol=0)
        torch.testing.assert_close(post, mid + res[f"blocks.{layer}.hook_mlp_out"], rtol=0, atol=0)
        if layer + 1 < small_config.n_layers:
            assert torch.equal(post, res[f"blocks.{layer + 1}.hook_resid_pre"])


def test_padding_mask_matches_unpadded(small_config):
    model = DepthcurseLM(small_config).eval()
    short = torch.randint(1, small_config.vocab_size, (1, 6))
    padded = torch.cat([short, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, :6], model(short), atol=1e-6, rtol=0)


def test_ln_scaling_changes_output(small_config):
    torch.manual_seed(1)
    plain = DepthcurseLM(small_config).eval()
    scaled = DepthcurseLM(small_config.replace(ln_scaling=True)).eval()
    scaled.load_state_dict(plain.state_dict())
    x = torch.randint(0, small_config.vocab_size, (1, 8))
    assert scaled.norm_scale(3) == pytest.approx(0.5)
    assert not torch.allclose(plain(x), scaled(x))


@pytest.mark.parametrize("ln_scaling", [False, True])
@pytest.mark.parametrize("tie", [True, False])
def test_parity_with_transformers_llama(small_config, tmp_path, ln_scaling, tie):
    cfg = small_config.replace(ln_scaling=ln_scaling, tie_embeddings=tie)
    model = DepthcurseLM(cfg).eval()
    perturb_norms(model)
    save_checkpoint(tmp_path / "ckpt", model)
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "ckpt", attn_implementation="eager").eval()
    x = torch.randint(0, cfg.vocab_size, (3, 20))
    res = {}
    with torch.no_grad():
        ours = model(x, residuals=res)
        theirs = hf(x, output_hidden_states=True)
    torch.testing.assert_close(ours, theirs.logits, atol=PARITY_ATOL, rtol=0)
    for layer in range(cfg.n_layers):
        torch.testing.assert_close(
            res[f"blocks.{layer}.hook_resid_pre"], theirs.hidden_states[layer], atol=PARITY_ATOL, rtol=0
        )
    # transformers applies the final norm to its last hidden state.
    torch.testing.assert_close(
        model.final_norm(res["ln_final.hook_in"]), theirs.hidden_states[-1], atol=PARITY_ATOL, rtol=0
    )


def test_shape_annotations_checked_under_pytest():
    from jaxtyping import TypeCheckError

    from depthcurse.model import apply_rotary

    # A 2-D tensor where (batch, heads, pos, d_head) is annotated: the import
    # hook installed by conftest.py must reject it before the function runs.
    with pytest.raises(TypeCheckError):
        apply_rotary(torch.zeros(3, 4), torch.zeros(4), torch.zeros(4))
