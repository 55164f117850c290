"""Test configuration: offline Hugging Face access, passive OpenMP threads."""

import os

# Set before torch or any Hugging Face library is imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from jaxtyping import install_import_hook  # noqa: E402

# Check every jaxtyping shape annotation (and plain type hint) of the package at
# run time. The hook must be installed before anything imports depthcurse.
sys.path.insert(0, str(Path(__file__).parent))
install_import_hook("depthcurse", "depthcurse_typecheck.typechecker")

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
