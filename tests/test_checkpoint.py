"""Checkpoint folders: round trip, atomic writes and clear errors on bad input."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from depthcurse import checkpoint as ckpt
from depthcurse.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from depthcurse.model import DepthcurseLM


@pytest.fixture
def saved(small_config, tmp_path):
    model = DepthcurseLM(small_config).eval()
    path = save_checkpoint(tmp_path / "ckpt", model, metadata={"step": 7, "seed": 3})
    return model, path


def test_round_trip_exact(saved):
    model, path = saved
    loaded, meta = load_checkpoint(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert meta["step"] == 7
    assert meta["seed"] == 3
    assert meta["layer_sources"] == [0, 1, 2]
    assert meta["model_config"]["n_layers"] == 3
    assert meta["depthcurse_version"]
    assert "git_revision" in meta


def test_ln_scaling_round_trip_exact_with_training_state(small_config, tmp_path):
    model = DepthcurseLM(small_config.replace(ln_scaling=True))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p))
    path = save_checkpoint(tmp_path / "c", model, training_state={"step": 1})
    loaded, _ = load_checkpoint(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # Folded gains in model.safetensors are the raw gains times 1/sqrt(l).
    exported = load_file(path / "model.safetensors")
    last = small_config.n_layers - 1
    torch.testing.assert_close(
        exported[f"model.layers.{last}.input_layernorm.weight"],
        model.blocks[last].attn_norm.weight.detach() / (small_config.n_layers**0.5),
    )


def test_training_state_round_trip(saved, small_config, tmp_path):
    model, _ = saved
    state = {"step": 5, "rng": torch.get_rng_state(), "sampler": {"batches_drawn": 4, "seed": 1}}
    path = save_checkpoint(tmp_path / "with_state", model, training_state=state)
    loaded = ckpt.load_training_state(path)
    assert loaded["step"] == 5
    assert torch.equal(loaded["rng"], state["rng"])
    assert loaded["sampler"] == {"batches_drawn": 4, "seed": 1}


def test_crash_mid_write_leaves_no_checkpoint(small_config, tmp_path, monkeypatch):
    model = DepthcurseLM(small_config)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated kill between files")

    monkeypatch.setattr(ckpt, "_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ckpt", model)
    assert not (tmp_path / "ckpt").exists()
    assert list(tmp_path.iterdir()) == []


def test_crash_mid_overwrite_keeps_old_checkpoint(saved, monkeypatch):
    model, path = saved
    monkeypatch.setattr(ckpt, "_write_json", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, metadata={"step": 99})
    assert ckpt.read_metadata(path)["step"] == 7


def test_crash_between_renames_recovers_old(saved):
    model, path = saved
    # State after the first rename of an overwrite: only the .old copy exists.
    os.rename(path, path.parent / f".{path.name}.old")
    loaded, meta = load_checkpoint(path)
    assert meta["step"] == 7


def test_missing_folder_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.*does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_folder_without_metadata(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="no depthcurse.json"):
        load_checkpoint(tmp_path / "x")


def test_corrupt_metadata(saved):
    _, path = saved
    (path / "depthcurse.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_truncated_weights(saved):
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_missing_weights(saved):
    _, path = saved
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(path)


def test_config_mismatch_names_tensor(saved):
    _, path = saved
    meta = json.loads((path / "depthcurse.json").read_text())
    meta["model_config"]["d_mlp"] = 64
    (path / "depthcurse.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model.layers.0.mlp.gate_proj.weight has shape \(48, 32\)"):
        load_checkpoint(path)


def test_extra_layer_in_config_named(saved):
    _, path = saved
    meta = json.loads((path / "depthcurse.json").read_text())
    meta["model_config"]["n_layers"] = 4
    (path / "depthcurse.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model.layers.3.input_layernorm.weight is missing"):
        load_checkpoint(path)


def test_unknown_config_key_in_metadata(saved):
    _, path = saved
    meta = json.loads((path / "depthcurse.json").read_text())
    meta["model_config"]["n_layer"] = 4
    (path / "depthcurse.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="n_layer'"):
        load_checkpoint(path)


def test_nan_weights_named(saved):
    _, path = saved
    weights = load_file(path / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(weights, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="up_proj.weight contains NaN"):
        load_checkpoint(path)


def test_wrong_layer_sources_length(small_config, tmp_path):
    with pytest.raises(CheckpointError, match="layer_sources has 2 entries"):
        save_checkpoint(tmp_path / "c", DepthcurseLM(small_config), metadata={"layer_sources": [0, 1]})
