"""Result caching keyed by (model hash, analysis name, arguments).

A cached table is a parquet file named by the SHA-256 of its key, so
re-plotting or re-running a report after a finished analysis costs nothing.
The model hash covers the weight files' bytes, so a retrained checkpoint in
the same folder never reuses stale results.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin")


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def model_hash(source: str | Path) -> str:
    """Return a SHA-256 over a model source's weight and config files.

    A folder hashes its weight files (`*.safetensors`, `*.gguf`, `*.bin`) and
    its `config.json`. A file hashes its bytes, and a bundled model name such
    as `smollm2-135m` hashes its name.
    """
    path = Path(source)
    if not path.exists():
        return hashlib.sha256(str(source).encode()).hexdigest()
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    if not files:
        raise FileNotFoundError(f"{path} contains no weight files (*.safetensors, *.gguf, *.bin) to hash")
    for file in files:
        digest.update(file.name.encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def cache_key(model_digest: str, analysis: str, arguments: dict[str, Any]) -> str:
    payload = json.dumps(
        {"model": model_digest, "analysis": analysis, "arguments": arguments}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class ResultCache:
    """A folder of parquet tables keyed by (model hash, analysis, arguments)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, model_digest: str, analysis: str, arguments: dict[str, Any]) -> Path:
        return self.folder / f"{analysis}-{cache_key(model_digest, analysis, arguments)}.parquet"

    def get_or_compute(
        self,
        model_digest: str,
        analysis: str,
        arguments: dict[str, Any],
        compute: Callable[[], pd.DataFrame],
    ) -> pd.DataFrame:
        """Return the cached table, or run `compute`, store its result and return it."""
        target = self.path(model_digest, analysis, arguments)
        if target.is_file():
            return pd.read_parquet(target)
        table = compute()
        tmp = target.with_suffix(f".tmp-{os.getpid()}")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, target)
        return table
