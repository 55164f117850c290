"""Test configuration: offline Hugging Face access, passive OpenMP threads."""

import os

# Set before torch or any Hugging Face library is imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from depthcurse.config import ModelConfig  # noqa: E402


@pytest.fixture
def small_config() -> ModelConfig:
    """A 3-layer model small enough for exhaustive checks."""
    return ModelConfig(
        vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_mlp=48, max_seq_len=32
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
