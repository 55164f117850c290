"""Execute the quick-start notebook end to end (trains a tiny model, loads SmolLM2-135M)."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    # The kernel inherits this environment: our package, the work folder, one thread.
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("DEPTHCURSE_QUICKSTART_DIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    notebook = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    first_output = "".join(o.get("text", "") for o in notebook.cells[1].outputs)
    # jupyter_client runs the "python3" kernel with the interpreter that runs the tests.
    assert f"python: {sys.executable}" in first_output
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == [
        "contributions.pdf", "contributions.png", "lens.pdf", "lens.png",
        "residual_norms.pdf", "residual_norms.png",
    ]
    images = [o for o in notebook.cells[-1].outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3
    assert (tmp_path / "run" / "run.json").is_file()
