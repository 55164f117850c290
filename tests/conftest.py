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


# ---------------------------------------------------------------------------
# Tiny checkpoints and suite results shared by the figure and CLI tests.


def _tiny_checkpoint(folder, tokenizer_file, n_layers: int, vocab_size: int):
    from depthcurse.checkpoint import save_checkpoint
    from depthcurse.model import DepthcurseLM

    config = ModelConfig(
        vocab_size=vocab_size, d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=2,
        d_mlp=64, max_seq_len=64,
    )
    torch.manual_seed(n_layers)
    save_checkpoint(folder, DepthcurseLM(config), tokenizer_file=tokenizer_file)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict:
    """Random checkpoints: "a" (4 layers) and "b" (6 layers) share a tokenizer, "c" has its own."""
    from depthcurse.data import load_default_corpus, train_tokenizer

    root = tmp_path_factory.mktemp("checkpoints")
    documents = load_default_corpus()[:3]
    train_tokenizer(documents, vocab_size=300, path=root / "tokenizer.json")
    train_tokenizer(documents[1:], vocab_size=280, path=root / "other-tokenizer.json")
    return {
        "a": _tiny_checkpoint(root / "a", root / "tokenizer.json", 4, 300),
        "b": _tiny_checkpoint(root / "b", root / "tokenizer.json", 6, 300),
        "c": _tiny_checkpoint(root / "c", root / "other-tokenizer.json", 3, 280),
    }


@pytest.fixture(scope="session")
def tiny_suite_options():
    from depthcurse.suite import SuiteOptions

    return SuiteOptions(
        n_prompts=4, prompt_tokens=32, batch_size=4, tuned_lens_steps=5, eval_n_per_level=2,
        eval_shots=1, depth_score_prompts=2,
    )


@pytest.fixture(scope="session")
def suite_tables(tiny_checkpoints, tiny_suite_options) -> dict:
    """Every suite table of checkpoints "a" and "b": {"a": tables, "b": tables}."""
    import depthcurse
    from depthcurse.suite import run_suite

    return {
        name: run_suite(depthcurse.load(tiny_checkpoints[name]), options=tiny_suite_options, label=name)
        for name in ("a", "b")
    }
