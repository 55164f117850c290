"""Residual-stream analyses: norms, contributions, cosines, logit and tuned lens, similarity."""

import json
import math
import shutil

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import depthcurse  # noqa: E402
from depthcurse.analyses import (  # noqa: E402
    LensHead,
    TunedLens,
    collect_stream,
    contribution_summary,
    contributions,
    copy_divergence,
    cosines,
    layer_similarity,
    logit_lens,
    residual_norms,
    residual_norms_over_run,
    train_tuned_lens,
    tuned_lens,
)
from depthcurse.checkpoint import save_checkpoint  # noqa: E402
from depthcurse.config import ModelConfig  # noqa: E402
from depthcurse.growth import Lineage, grow_model, plan_growth  # noqa: E402
from depthcurse.model import DepthcurseLM  # noqa: E402
from depthcurse.plots.lens import plot_lens  # noqa: E402
from depthcurse.plots.stream import (  # noqa: E402
    plot_contributions,
    plot_copy_divergence,
    plot_cosines,
    plot_layer_similarity,
    plot_norms_over_run,
    plot_residual_norms,
)
from depthcurse.prompts import Prompt, PromptSet  # noqa: E402

CONFIG = ModelConfig(
    vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_mlp=48, max_seq_len=32
)
# The bridge runs transformers' eager attention, our model SDPA: a few float32
# ulp apart, far below 1e-4 relative on norms of order 0.1-10.
PARITY_RTOL = 1e-4


def bigram_batch(successors: torch.Tensor, n: int, length: int, generator: torch.Generator):
    """Sequences where each token is followed by one of two fixed successors."""
    ids = torch.empty(n, length, dtype=torch.long)
    ids[:, 0] = torch.randint(0, CONFIG.vocab_size, (n,), generator=generator)
    for pos in range(1, length):
        choice = torch.randint(0, 2, (n,), generator=generator)
        ids[:, pos] = successors[ids[:, pos - 1], choice]
    return ids


@pytest.fixture(scope="session")
def bigram_data():
    generator = torch.Generator().manual_seed(1)
    successors = torch.randint(0, CONFIG.vocab_size, (CONFIG.vocab_size, 2), generator=generator)
    return successors, generator


@pytest.fixture(scope="session")
def trained_folder(tmp_path_factory, bigram_data):
    """A tiny model trained for 150 Adam steps on bigram text, saved as a checkpoint."""
    successors, generator = bigram_data
    torch.manual_seed(0)
    model = DepthcurseLM(CONFIG)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        ids = bigram_batch(successors, 16, 32, generator)
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, CONFIG.vocab_size), ids[:, 1:].reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("trained") / "ckpt"
    save_checkpoint(folder, model.eval(), metadata={"step": 150})
    return folder


@pytest.fixture(scope="session")
def trained_model(trained_folder):
    return depthcurse.load(trained_folder)


@pytest.fixture(scope="session")
def random_folder(tmp_path_factory):
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("random") / "ckpt"
    save_checkpoint(folder, DepthcurseLM(CONFIG).eval())
    return folder


@pytest.fixture(scope="session")
def prompts(bigram_data):
    """Prompts of different lengths, so batches carry right padding."""
    successors, _ = bigram_data
    generator = torch.Generator().manual_seed(7)
    ids = bigram_batch(successors, 7, 24, generator)
    lengths = [24, 9, 17, 3, 24, 12, 20]
    return PromptSet(
        "bigram", [Prompt(f"p{i}", ids[i, :n].tolist()) for i, n in enumerate(lengths)]
    )


@pytest.fixture(scope="session")
def held_out(bigram_data):
    successors, _ = bigram_data
    generator = torch.Generator().manual_seed(11)
    ids = bigram_batch(successors, 24, 24, generator)
    return PromptSet("held-out", [Prompt(f"h{i}", row.tolist()) for i, row in enumerate(ids)])


@pytest.fixture(scope="session")
def stats(trained_model, prompts):
    return collect_stream(trained_model, prompts, batch_size=3)


def value(table, metric, layer, statistic="mean", **columns):
    rows = table[
        (table["metric"] == metric) & (table["layer"] == layer) & (table["statistic"] == statistic)
    ]
    for name, expected in columns.items():
        rows = rows[rows[name] == expected]
    assert len(rows) == 1, f"expected one row for {metric} at layer {layer}, found {len(rows)}"
    return rows["value"].iloc[0]


def hand_residuals(folder, prompts):
    """Residuals of the selected tokens (real, position > 0) from a plain forward pass."""
    from depthcurse.checkpoint import load_checkpoint

    model, _ = load_checkpoint(folder)
    model.eval()
    collected = {}
    for _, ids, mask in prompts.batches(len(prompts)):
        residuals = {}
        with torch.no_grad():
            model(ids, attention_mask=mask, residuals=residuals)
        keep = mask.bool().clone()
        keep[:, 0] = False
        for name, tensor in residuals.items():
            collected[name] = tensor[keep].double()
    return collected


# ---------------------------------------------------------------------------
# Logit lens


@pytest.mark.parametrize("kl_direction", ["lens||final", "final||lens"])
def test_lens_at_output_is_model(trained_model, prompts, kl_direction):
    table = logit_lens(trained_model, prompts, kl_direction=kl_direction, batch_size=4)
    last = CONFIG.n_layers
    # float32 head vs the model's float32 logits: identical up to rounding.
    assert value(table, "kl", last) < 1e-6
    assert value(table, "top5_overlap", last) == 1.0
    assert value(table, "top1_agreement", last) == 1.0
    assert (table["kl_direction"] == kl_direction).all()


def test_lens_recomputes_norm(trained_model, trained_folder, prompts, stats):
    table = stats.logit_lens()
    entropy_layer0 = value(table, "entropy", 0)
    assert entropy_layer0 < 0.5 * math.log(CONFIG.vocab_size)

    # The same entropy by hand, once with the norm recomputed on h_0 and once
    # with the final residual's scale (the TransformerLens cached-scale pitfall).
    residuals = hand_residuals(trained_folder, prompts)
    head = LensHead.from_model(trained_model)
    h0 = residuals["blocks.0.hook_resid_pre"].float()
    h_final = residuals["ln_final.hook_in"].float()
    final_scale = torch.rsqrt(h_final.pow(2).mean(-1, keepdim=True) + head.eps)

    def entropy(logits):
        logp = torch.log_softmax(logits, dim=-1)
        return -(logp.exp() * logp).sum(-1).mean().item()

    assert entropy(head(h0)) == pytest.approx(entropy_layer0, rel=1e-4)
    assert abs(entropy(head(h0, scale=final_scale)) - entropy_layer0) > 0.1


@pytest.mark.parametrize("kl_direction", ["lens||final", "final||lens"])
@pytest.mark.parametrize("spread", [1.0, 10.0, 60.0])
def test_lens_metrics_match_float64_reference(kl_direction, spread):
    from depthcurse.analyses.logit_lens import lens_metrics

    generator = torch.Generator().manual_seed(0)
    lens_logits = spread * torch.randn(16, 3000, generator=generator)
    final_logits = 3.0 * torch.randn(16, 3000, generator=generator)
    targets = torch.randint(0, 3000, (16,), generator=generator)
    targets[3] = -1  # no next token
    got = lens_metrics(lens_logits, final_logits, targets, kl_direction)

    # Reference: float64 log-softmax, every formula written out directly.
    lens_logp = torch.log_softmax(lens_logits.double(), -1)
    final_logp = torch.log_softmax(final_logits.double(), -1)
    if kl_direction == "lens||final":
        kl = (lens_logp.exp() * (lens_logp - final_logp)).sum(-1)
    else:
        kl = (final_logp.exp() * (final_logp - lens_logp)).sum(-1)
    entropy = -(lens_logp.exp() * lens_logp).sum(-1)
    loss = -lens_logp.gather(-1, targets.clamp_min(0)[:, None])[:, 0]
    # With spread 60 the logits span about +-250 and many probabilities are
    # below float32's normal range; float32 sums of such terms agree to ~1e-4.
    tolerance = 1e-4 * max(1.0, spread / 10)
    torch.testing.assert_close(got["kl"].double(), kl, atol=tolerance, rtol=1e-5)
    torch.testing.assert_close(got["entropy"].double(), entropy, atol=tolerance, rtol=1e-5)
    keep = targets >= 0
    torch.testing.assert_close(got["loss"][keep].double(), loss[keep], atol=tolerance, rtol=1e-5)
    assert torch.isnan(got["loss"][3])
    assert torch.isnan(got["accuracy"][3])
    top1 = lens_logits.argmax(-1)
    assert torch.equal(got["top1_agreement"].bool(), top1 == final_logits.argmax(-1))
    overlap = [
        len(set(a.tolist()) & set(b.tolist())) / 5
        for a, b in zip(lens_logits.topk(5).indices, final_logits.topk(5).indices, strict=True)
    ]
    assert got["top5_overlap"].tolist() == pytest.approx(overlap)


def test_lens_accuracy_and_loss(trained_model, prompts, stats):
    table = stats.logit_lens()
    last = CONFIG.n_layers
    # Bigram text: the trained model picks one of the two successors, so its
    # top-1 accuracy is near one half and its loss near log 2.
    assert 0.3 < value(table, "accuracy", last) <= 0.7
    assert value(table, "loss", last) < 1.2
    # Tokens with a next token: all selected tokens but the last of each prompt.
    expected = sum(len(p.token_ids) - 2 for p in prompts.prompts if len(p.token_ids) > 1)
    rows = table[(table["metric"] == "loss") & (table["layer"] == last)]
    assert rows["n_tokens"].iloc[0] == expected


# ---------------------------------------------------------------------------
# Norms, contributions and cosines against a hand computation


def test_norms_match_hand(random_folder, prompts):
    model = depthcurse.load(random_folder)
    table = residual_norms(model, prompts, batch_size=2)
    residuals = hand_residuals(random_folder, prompts)
    for layer in range(CONFIG.n_layers + 1):
        name = f"blocks.{layer}.hook_resid_pre" if layer < CONFIG.n_layers else "ln_final.hook_in"
        norms = residuals[name].norm(dim=-1)
        assert value(table, "norm_h", layer) == pytest.approx(norms.mean().item(), rel=PARITY_RTOL)
        assert value(table, "norm_h", layer, "max") == pytest.approx(
            norms.max().item(), rel=PARITY_RTOL
        )
    for layer in range(CONFIG.n_layers):
        for metric, site in (("norm_a", "attn_out"), ("norm_m", "mlp_out")):
            norms = residuals[f"blocks.{layer}.hook_{site}"].norm(dim=-1)
            assert value(table, metric, layer) == pytest.approx(
                norms.mean().item(), rel=PARITY_RTOL
            )
    n_selected = sum(len(p.token_ids) - 1 for p in prompts.prompts)
    assert (table["n_tokens"] == n_selected).all()


def test_contributions_match_hand(random_folder, prompts):
    model = depthcurse.load(random_folder)
    # batch_size=2 splits the 7 prompts into 4 batches: the mean must be the
    # mean over all tokens of all prompts, not of the last batch.
    table = contributions(model, prompts, batch_size=2)
    residuals = hand_residuals(random_folder, prompts)
    for layer in range(CONFIG.n_layers):
        h = residuals[f"blocks.{layer}.hook_resid_pre"]
        a = residuals[f"blocks.{layer}.hook_attn_out"]
        m = residuals[f"blocks.{layer}.hook_mlp_out"]
        expected = {
            "attn": a.norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-6),
            "mlp": m.norm(dim=-1) / (h + a).norm(dim=-1).clamp_min(1e-6),
            "layer": (a + m).norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-6),
        }
        for metric, ratios in expected.items():
            assert value(table, metric, layer) == pytest.approx(
                ratios.mean().item(), rel=PARITY_RTOL
            )
            assert value(table, metric, layer, "max") == pytest.approx(
                ratios.max().item(), rel=PARITY_RTOL
            )


def test_cosines_match_hand(random_folder, prompts):
    model = depthcurse.load(random_folder)
    table = cosines(model, prompts, batch_size=3)
    residuals = hand_residuals(random_folder, prompts)
    layer = 1
    h = residuals[f"blocks.{layer}.hook_resid_pre"]
    a = residuals[f"blocks.{layer}.hook_attn_out"]
    m = residuals[f"blocks.{layer}.hook_mlp_out"]
    h_next = residuals[f"blocks.{layer + 1}.hook_resid_pre"]
    cos = torch.nn.functional.cosine_similarity
    # Cosines are of order 0.01-1 and may be near zero: compare absolutely.
    assert value(table, "cos(a,h)", layer) == pytest.approx(cos(a, h).mean().item(), abs=1e-5)
    assert value(table, "cos(m,h+a)", layer) == pytest.approx(
        cos(m, h + a).mean().item(), abs=1e-5
    )
    assert value(table, "cos(a+m,h)", layer) == pytest.approx(
        cos(a + m, h).mean().item(), abs=1e-5
    )
    assert value(table, "cos(h_next,h)", layer) == pytest.approx(
        cos(h_next, h).mean().item(), abs=1e-5
    )


def test_contribution_summary_with_and_without_layer0(random_folder, prompts):
    model = depthcurse.load(random_folder)
    table = contributions(model, prompts, batch_size=4)
    summary = contribution_summary(table)
    layer_means = [value(table, "layer", layer) for layer in range(CONFIG.n_layers)]
    row = summary[(summary["metric"] == "layer") & (summary["layers"] == "all")]
    # Three layers: the first half is layer 0, the second layer 2, layer 1 is the middle.
    assert row["value"].iloc[0] == pytest.approx(layer_means[2] / layer_means[0])
    row = summary[(summary["metric"] == "layer") & (summary["layers"] == "excluding_layer_0")]
    assert row["value"].iloc[0] == pytest.approx(layer_means[2] / layer_means[1])


# ---------------------------------------------------------------------------
# A layer that writes nothing


@pytest.fixture(scope="session")
def silent_layer_model(tmp_path_factory):
    torch.manual_seed(5)
    model = DepthcurseLM(CONFIG).eval()
    with torch.no_grad():
        model.blocks[1].attn.o_proj.weight.zero_()
        model.blocks[1].mlp.down_proj.weight.zero_()
    folder = tmp_path_factory.mktemp("silent") / "ckpt"
    save_checkpoint(folder, model)
    return depthcurse.load(folder)


def test_zeroed_layer_contributes_nothing(silent_layer_model, prompts):
    table = contributions(silent_layer_model, prompts)
    for metric in ("attn", "mlp", "layer"):
        assert value(table, metric, 1) == 0.0
        assert value(table, metric, 1, "max") == 0.0
        assert value(table, metric, 0) > 0.0


def test_zeroed_layer_cosines_undefined(silent_layer_model, prompts):
    table = cosines(silent_layer_model, prompts)
    n_selected = sum(len(p.token_ids) - 1 for p in prompts.prompts)
    for metric in ("cos(a,h)", "cos(m,h+a)", "cos(a+m,h)"):
        row = table[(table["metric"] == metric) & (table["layer"] == 1)].iloc[0]
        assert math.isnan(row["value"])
        assert bool(row["undefined"])
        assert row["n_undefined"] == n_selected
        assert row["n_tokens"] == 0
    # h_2 = h_1 exactly, so this cosine is defined and equal to one.
    assert value(table, "cos(h_next,h)", 1) == pytest.approx(1.0, abs=1e-6)
    assert not table[table["layer"] != 1]["undefined"].any()


def test_zeroed_layer_similarity_nan(silent_layer_model, prompts):
    table = layer_similarity(silent_layer_model, prompts)
    delta = table[(table["metric"] == "delta") & (table["layer"] == 1)]
    assert delta["value"].isna().all()
    w_o = table[(table["metric"] == "W_O") & (table["layer"] == 0) & (table["other_layer"] == 0)]
    assert w_o["value"].iloc[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------
# Batching, dtype and conventions


def test_batched_equals_unbatched(trained_model, prompts):
    batched = collect_stream(trained_model, prompts, batch_size=4)
    single = collect_stream(trained_model, prompts, batch_size=1)
    for name in ("residual_norms", "contributions", "cosines", "logit_lens", "layer_similarity"):
        left = getattr(batched, name)()
        right = getattr(single, name)()
        assert left["n_tokens"].tolist() == right["n_tokens"].tolist(), name
        # Padding changes the eager-attention reduction order only: float32 noise.
        np.testing.assert_allclose(
            left["value"], right["value"], rtol=1e-4, atol=1e-5, err_msg=name
        )


def test_token_chunks_do_not_change_results(trained_model, prompts, stats, monkeypatch):
    # The test batches hold fewer tokens than one default chunk, so shrink the chunks
    # to make the lens and similarity sums cross chunk and batch boundaries.
    import importlib

    # The package re-exports functions under the modules' names, so import the modules.
    lens_module = importlib.import_module("depthcurse.analyses.logit_lens")
    similarity_module = importlib.import_module("depthcurse.analyses.layer_similarity")

    monkeypatch.setattr(lens_module, "TOKEN_CHUNK", 5)
    monkeypatch.setattr(similarity_module, "TOKEN_CHUNK", 7)
    chunked = collect_stream(trained_model, prompts, batch_size=3)
    for name in ("logit_lens", "layer_similarity"):
        left, right = getattr(chunked, name)(), getattr(stats, name)()
        assert left["n_tokens"].tolist() == right["n_tokens"].tolist(), name
        np.testing.assert_allclose(left["value"], right["value"], rtol=1e-5, atol=1e-6, err_msg=name)


def test_collect_residuals_match_hand(random_folder, prompts):
    from depthcurse.analyses.tuned_lens import collect_residuals

    model = depthcurse.load(random_folder)
    residuals = collect_residuals(model, prompts, batch_size=3, exclude_pos0=True)
    hand = hand_residuals(random_folder, prompts)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(CONFIG.n_layers)]
    expected = torch.stack([hand[name] for name in [*names, "ln_final.hook_in"]], dim=1)
    assert residuals.dtype == torch.float32
    assert residuals.shape == expected.shape
    torch.testing.assert_close(residuals.double(), expected, rtol=PARITY_RTOL, atol=1e-5)


def test_raw_token_batch_matches_promptset(trained_model, prompts):
    full = [p for p in prompts.prompts if len(p.token_ids) == 24]
    ids = torch.tensor([p.token_ids for p in full])
    from_tensor = residual_norms(trained_model, ids)
    from_set = residual_norms(trained_model, PromptSet("full", full))
    np.testing.assert_allclose(from_tensor["value"], from_set["value"], rtol=1e-6)


def test_bfloat16_model_float32_metrics(trained_folder, trained_model, prompts):
    low = depthcurse.load(trained_folder, dtype=torch.bfloat16)
    stats_low = collect_stream(low, prompts)
    stats_high = collect_stream(trained_model, prompts)
    for name in ("residual_norms", "contributions", "logit_lens"):
        left, right = getattr(stats_low, name)(), getattr(stats_high, name)()
        assert (left["dtype"] == "bfloat16").all()
        assert (left["metric_dtype"] == "float32").all()
        assert left["value"].dtype == np.float64
        assert np.isfinite(left["value"]).all()
        # bfloat16 keeps 8 mantissa bits (relative step 2**-8 = 0.4%); errors
        # compound over three layers, so allow 5% or 0.05 absolute.
        np.testing.assert_allclose(left["value"], right["value"], rtol=0.05, atol=0.05)


def test_tables_carry_conventions(stats, prompts):
    for name in ("residual_norms", "contributions", "cosines", "logit_lens", "layer_similarity"):
        table = getattr(stats, name)()
        for column in ("model", "layer", "metric", "statistic", "value", "exclude_pos0",
                       "kl_direction", "prepend_bos", "dtype", "weight_processing", "note"):
            assert column in table.columns, f"{name} lacks {column}"
        assert table["exclude_pos0"].all()
        assert (table["prepend_bos"] == prompts.prepend_bos).all()
        assert table.attrs["exclude_pos0"] is True
        assert "h_{l+1} = h_l + a_l + m_l" in table.attrs["notation"]


def test_include_pos0_counts_more_tokens(trained_model, prompts):
    table = residual_norms(trained_model, prompts, exclude_pos0=False)
    n_real = sum(len(p.token_ids) for p in prompts.prompts)
    assert (table["n_tokens"] == n_real).all()
    assert not table["exclude_pos0"].any()


def test_invalid_inputs_rejected(trained_model, prompts, stats):
    with pytest.raises(ValueError, match="kl_direction"):
        logit_lens(trained_model, prompts, kl_direction="forward")
    ids = torch.ones(2, 5, dtype=torch.long)
    left_padded = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="right-padded"):
        residual_norms(trained_model, (ids, left_padded))
    with pytest.raises(KeyError, match="tuned_lens"):
        stats.tuned_lens()
    with pytest.raises(ValueError, match="prompts are required"):
        residual_norms(trained_model)


# ---------------------------------------------------------------------------
# Tuned lens


def test_tuned_lens_output_needs_no_translator(trained_model):
    lens = TunedLens(CONFIG.n_layers, CONFIG.d_model)
    assert len(lens.translators) == CONFIG.n_layers
    h = torch.randn(5, CONFIG.d_model)
    assert lens.translate(CONFIG.n_layers, h) is h
    # Zero initialisation: an untrained tuned lens is the logit lens.
    torch.testing.assert_close(lens.translate(0, h), h)


def test_soft_target_kl_matches_autograd(trained_model):
    from depthcurse.analyses.tuned_lens import soft_target_kl

    head = LensHead.from_model(trained_model)
    generator = torch.Generator().manual_seed(0)
    h = (3.0 * torch.randn(12, CONFIG.d_model, generator=generator)).requires_grad_()
    final_logits = 2.0 * torch.randn(12, CONFIG.vocab_size, generator=generator)
    final_logp = torch.log_softmax(final_logits, -1)
    final_p = final_logp.exp()
    got = soft_target_kl(head, h, final_p, (final_p * final_logp).sum(-1))
    (grad_got,) = torch.autograd.grad(got, h)

    # Reference: autograd through log_softmax and the KL sum, in float64.
    h64 = h.detach().double().requires_grad_()
    normed = h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + head.eps)
    lens_logp = torch.log_softmax((normed * head.norm_weight.double()) @ head.unembed_weight.double().T, -1)
    expected = (final_p.double() * (final_logp.double() - lens_logp)).sum(-1).mean()
    (grad_expected,) = torch.autograd.grad(expected, h64)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(grad_got.double(), grad_expected, rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="session")
def trained_lens(trained_model, trained_folder, held_out):
    torch.manual_seed(0)
    return train_tuned_lens(trained_model, held_out, steps=150, tokens_per_step=128, lr=3e-3)


def test_tuned_lens_lowers_held_out_kl(trained_model, trained_lens, prompts):
    stats = collect_stream(
        trained_model, prompts, analyses=("logit_lens",), tuned_lens=trained_lens,
        kl_direction="final||lens",
    )
    logit, tuned = stats.logit_lens(), stats.tuned_lens()
    for layer in range(CONFIG.n_layers):
        assert value(tuned, "kl", layer) < value(logit, "kl", layer), f"layer {layer}"
    last = CONFIG.n_layers
    assert value(tuned, "kl", last) == pytest.approx(value(logit, "kl", last), abs=1e-9)


def test_least_squares_start_beats_zero_start(trained_model, held_out, prompts):
    # With no KL steps, the least-squares start is the linear shortcut; on
    # held-out prompts its KL must be below the logit lens's at every layer.
    fitted = train_tuned_lens(trained_model, held_out, steps=0, save=False)
    zero = train_tuned_lens(trained_model, held_out, steps=0, init="zero", save=False)
    assert fitted.metadata["init"] == "least_squares"
    for translator in zero.translators:
        assert not translator.weight.any()
        assert not translator.bias.any()
    fitted_table = tuned_lens(trained_model, prompts, lens=fitted, kl_direction="final||lens")
    zero_table = tuned_lens(trained_model, prompts, lens=zero, kl_direction="final||lens")
    logit = logit_lens(trained_model, prompts, kl_direction="final||lens")
    for layer in range(CONFIG.n_layers):
        assert value(zero_table, "kl", layer) == pytest.approx(value(logit, "kl", layer), rel=1e-5)
        assert value(fitted_table, "kl", layer) < value(logit, "kl", layer), f"layer {layer}"
    with pytest.raises(ValueError, match="init='identity'"):
        train_tuned_lens(trained_model, held_out, steps=0, init="identity", save=False)


def test_tuned_lens_saved_in_checkpoint(trained_model, trained_folder, trained_lens, prompts):
    assert (trained_folder / "tuned_lens.safetensors").is_file()
    reloaded = TunedLens.load(trained_folder)
    assert reloaded.metadata["steps"] == 150
    direct = tuned_lens(trained_model, prompts, lens=trained_lens)
    from_disk = tuned_lens(trained_model, prompts)
    np.testing.assert_allclose(direct["value"], from_disk["value"], rtol=1e-6)
    assert (from_disk["lens"] == "tuned").all()


def test_tuned_lens_shape_mismatch(random_folder, prompts):
    model = depthcurse.load(random_folder)
    with pytest.raises(ValueError, match="train one"):
        tuned_lens(model, prompts, lens=TunedLens(CONFIG.n_layers + 1, CONFIG.d_model))


# ---------------------------------------------------------------------------
# Runs: norms over checkpoints and copy divergence


@pytest.fixture(scope="session")
def grown_run(tmp_path_factory):
    """A 2-layer model grown to 4 by MIDAS, saved at growth and after its copies drift."""
    torch.manual_seed(9)
    run = tmp_path_factory.mktemp("run")
    small = CONFIG.replace(n_layers=2)
    model = DepthcurseLM(small).eval()
    lineage = Lineage.initial(2)
    save_checkpoint(run / "step-0", model, metadata={"step": 0, "stage": 0, **lineage.to_metadata()})
    plan = plan_growth("midas", 2, 2)
    grow_model(model, plan)
    lineage.apply(plan, stage=1, step=10)
    save_checkpoint(run / "step-10", model, metadata={"step": 10, "stage": 1, **lineage.to_metadata()})
    with torch.no_grad():
        for block in model.blocks[2:]:
            for parameter in block.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
    # No layer_ids: the positions must be rebuilt from the growth history.
    metadata = {"step": 20, "stage": 1, "growth_history": lineage.history,
                "layer_sources": lineage.layer_sources}
    save_checkpoint(run / "step-20", model, metadata=metadata)
    # What an interrupted atomic write leaves behind: every reader must skip it.
    partial = run / ".step-30.tmp-0000"
    shutil.copytree(run / "step-20", partial)
    meta = json.loads((partial / "depthcurse.json").read_text())
    (partial / "depthcurse.json").write_text(json.dumps({**meta, "step": 30}))
    return run


def test_copy_divergence_tracks_drift(grown_run):
    table = copy_divergence(grown_run)
    assert sorted(table["step"].unique()) == [10, 20]
    assert set(table["module"]) == {"W_Q", "W_K", "W_V", "W_O", "gate", "up", "down"}
    at_growth = table[table["step"] == 10]
    cosine = at_growth[at_growth["metric"] == "cosine"]["value"]
    distance = at_growth[at_growth["metric"] == "relative_distance"]["value"]
    np.testing.assert_allclose(cosine, 1.0, atol=1e-6)
    np.testing.assert_allclose(distance, 0.0, atol=1e-6)
    later = table[(table["step"] == 20) & (table["metric"] == "cosine")]
    assert (later["value"] < 1.0 - 1e-4).all()
    # MIDAS on 2 layers with b=2 copies both layers and appends them: copies sit at 2 and 3.
    assert sorted(later["layer"].unique()) == [2, 3]
    assert sorted(later["source_layer"].unique()) == [0, 1]


def test_copy_divergence_needs_growth(trained_folder):
    with pytest.raises(ValueError, match="depth-grown"):
        copy_divergence([trained_folder])


def test_norms_over_run(grown_run, prompts):
    table = residual_norms_over_run(grown_run, prompts)
    assert sorted(table["step"].unique()) == [0, 10, 20]
    depth = table.groupby("step")["n_layers"].first().to_dict()
    assert depth == {0: 2, 10: 4, 20: 4}
    at_growth = table[table["step"] == 10]
    assert at_growth["layer"].max() == 4


# ---------------------------------------------------------------------------
# Plots draw from the tables


def test_plots_draw_tables(stats, trained_lens, prompts, trained_model, grown_run):
    lens_table = pd.concat(
        [stats.logit_lens(), tuned_lens(trained_model, prompts, lens=trained_lens)]
    )
    figures = [
        plot_residual_norms(stats.residual_norms()),
        plot_contributions(stats.contributions()),
        plot_cosines(stats.cosines()),
        plot_layer_similarity(stats.layer_similarity()),
        plot_lens(lens_table),
        plot_copy_divergence(copy_divergence(grown_run)),
        plot_norms_over_run(residual_norms_over_run(grown_run, prompts)),
    ]
    for figure in figures:
        drawn = sum(len(ax.lines) + len(ax.images) for ax in figure.axes)
        assert drawn > 0
        plt.close(figure)
    with pytest.raises(ValueError, match="expected a contributions table"):
        plot_contributions(stats.residual_norms())


def test_lens_layers_subset(trained_model, prompts, stats):
    last = CONFIG.n_layers
    subset = logit_lens(trained_model, prompts, lens_layers=[0, last])
    assert sorted(subset["layer"].unique()) == [0, last]
    full = stats.logit_lens()
    full = full[full["layer"].isin([0, last])].reset_index(drop=True)
    np.testing.assert_allclose(subset["value"], full["value"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lens_layers"):
        logit_lens(trained_model, prompts, lens_layers=[last + 1])


def test_plots_name_metrics_readably(stats):
    from depthcurse.plots.lens import plot_lens
    from depthcurse.plots.stream import plot_residual_norms

    fig = plot_lens(stats.logit_lens())
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "KL(p_lens || p_final) (nats)"
    assert "top-5 overlap with the output" in titles
    plt.close(fig)
    fig = plot_residual_norms(stats.residual_norms())
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sorted(labels) == sorted(["‖h_l‖ (residual in)", "‖a_l‖ (attention out)", "‖m_l‖ (MLP out)"])
    plt.close(fig)
