"""Hand-written autograd functions of the training path: gradients, and agreement with the eager ops."""

import pytest
import torch
from transformers import LlamaForCausalLM

from depthcurse import model as model_module
from depthcurse.checkpoint import save_checkpoint
from depthcurse.model import (
    DepthcurseLM,
    RMSNorm,
    RMSNormFunction,
    RotaryFunction,
    apply_rotary,
    rotary_tables,
)

# Both sides run float32 eager kernels that order a few operations differently,
# which moves values by a few ulp (about 1e-7 relative). 5e-5 absolute leaves
# room for that, while a wrong rotary convention or norm shows at 1e-2 or more.
PARITY_ATOL = 5e-5


def eager_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every layer run its plain eager ops, even while gradients are recorded."""
    monkeypatch.setattr(model_module, "use_training_functions", lambda: False)


def test_rmsnorm_gradcheck_float64():
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(RMSNormFunction.apply, (x, weight, 1e-5))


def test_rmsnorm_gradcheck_strided_input():
    # A transposed view reaches the backward as a non-contiguous saved tensor.
    x = torch.randn(6, 4, dtype=torch.float64).t().requires_grad_()
    weight = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(RMSNormFunction.apply, (x, weight, 1e-5))


def test_rotary_gradcheck_float64():
    cos, sin = rotary_tables(5, 8, 10000.0)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(RotaryFunction.apply, (x, cos.double(), sin.double()))


def test_rotary_gradcheck_arbitrary_tables():
    # Tables whose two halves differ: the backward must not rely on repeated angles.
    cos = torch.randn(5, 8, dtype=torch.float64)
    sin = torch.randn(5, 8, dtype=torch.float64)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(RotaryFunction.apply, (x, cos, sin))


def test_rotary_gradcheck_transposed_heads():
    # Attention passes q and k as (batch, pos, heads, d_head) storage viewed as (batch, heads, pos, d_head).
    cos, sin = rotary_tables(5, 8, 10000.0)
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64).transpose(1, 2).requires_grad_()
    assert torch.autograd.gradcheck(RotaryFunction.apply, (x, cos.double(), sin.double()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_forward_bit_identical(dtype):
    norm = RMSNorm(16, 1e-5)
    with torch.no_grad():
        norm.weight.add_(0.3 * torch.randn(16))
    x = torch.randn(3, 7, 16).to(dtype).requires_grad_()
    with torch.no_grad():
        eager = norm(x)
    trained = norm(x)
    assert trained.grad_fn is not None
    assert "RMSNormFunction" in type(trained.grad_fn).__name__
    # Same ops in the same order as the eager path, so no rounding may differ.
    torch.testing.assert_close(trained, eager, rtol=0, atol=0)


def test_rotary_forward_matches_eager():
    cos, sin = rotary_tables(12, 16, 10000.0)
    x = torch.randn(2, 12, 4, 16).transpose(1, 2)
    with torch.no_grad():
        eager = apply_rotary(x, cos, sin)
    trained = apply_rotary(x.requires_grad_(), cos, sin)
    assert "RotaryFunction" in type(trained.grad_fn).__name__
    # addcmul_ may round a*b + c once where the eager path rounds twice, so an
    # element can differ by one float32 ulp. Rotation keeps each pair's norm,
    # so |output| < 8 here and one ulp is at most 4.8e-7.
    torch.testing.assert_close(trained, eager, rtol=0, atol=1e-6)


def test_rotary_bfloat16_input_promotes():
    cos, sin = rotary_tables(12, 16, 10000.0)
    x = torch.randn(2, 4, 12, 16).to(torch.bfloat16)
    with torch.no_grad():
        eager = apply_rotary(x, cos, sin)
    trained = apply_rotary(x.requires_grad_(), cos, sin)
    assert trained.dtype == torch.float32
    # The same one-ulp float32 bound as for float32 input: only the rounding of a*b + c differs.
    torch.testing.assert_close(trained, eager, rtol=0, atol=1e-6)
    trained.sum().backward()
    assert x.grad.dtype == torch.bfloat16


def test_rotary_backward_is_inverse_rotation():
    # A rotation's adjoint is its inverse: rotating by +angle and then applying
    # the backward (rotation by -angle) gives back the input.
    cos, sin = rotary_tables(6, 8, 10000.0)
    x = torch.randn(1, 2, 6, 8, dtype=torch.float64, requires_grad=True)
    rotated = RotaryFunction.apply(x, cos.double(), sin.double())
    (back,) = torch.autograd.grad(rotated, x, grad_outputs=rotated.detach())
    # The tables hold float32 values, so cos^2 + sin^2 = 1 only to about 1.2e-7
    # (float32 epsilon). With |x| < 5 the error stays below 1e-6.
    torch.testing.assert_close(back, x.detach(), rtol=0, atol=1e-6)


def test_no_grad_runs_eager_ops():
    norm = RMSNorm(8, 1e-5)
    x = torch.randn(2, 8, requires_grad=True)
    with torch.no_grad():
        assert model_module.use_training_functions() is False
        assert norm(x).grad_fn is None
    assert model_module.use_training_functions() is True


@pytest.mark.parametrize("ln_scaling", [False, True])
def test_model_gradients_match_eager(small_config, monkeypatch, ln_scaling):
    cfg = small_config.replace(ln_scaling=ln_scaling)
    model = DepthcurseLM(cfg)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.3 * torch.randn_like(param))
    x = torch.randint(0, cfg.vocab_size, (3, 20))
    y = torch.randint(0, cfg.vocab_size, (3, 20))

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    trained_loss, trained_grads = loss_and_grads()
    eager_only(monkeypatch)
    eager_loss, eager_grads = loss_and_grads()

    # The forward differs only by the rotary addcmul rounding (about 1 ulp per element).
    torch.testing.assert_close(trained_loss, eager_loss, rtol=1e-6, atol=0)
    assert trained_grads.keys() == eager_grads.keys()
    for name, grad in trained_grads.items():
        # The two backwards sum the same terms in another order in float32, so
        # gradients agree to a few ulp of their largest element. Tolerances of
        # 1e-4 of that scale absorb this. A wrong formula, such as a missing
        # term or factor, is off by order 1 of that scale.
        scale = eager_grads[name].abs().max().item()
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-4 * scale, msg=name)


def test_training_path_parity_with_transformers(small_config, tmp_path):
    model = DepthcurseLM(small_config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.3 * torch.randn_like(param))
    save_checkpoint(tmp_path / "ckpt", model)
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "ckpt", attn_implementation="eager").eval()
    x = torch.randint(0, small_config.vocab_size, (3, 20))
    ours = model(x)
    assert ours.requires_grad
    with torch.no_grad():
        theirs = hf(x).logits
    torch.testing.assert_close(ours.detach(), theirs, atol=PARITY_ATOL, rtol=0)
