# `make demo` and `make test` work on a fresh machine: they create .venv, install torch 2.13.0 (pinned), install the
# project, then run. Which torch *build* pip picks is pip's configured index's choice: on plain PyPI, Linux x86-64,
# that is the CUDA build plus ~19 NVIDIA packages (gigabytes). TORCH_INDEX names another index for torch alone,
# e.g. PyTorch's CPU-only wheels on a machine without a GPU:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffusion-curriculum train

# One pytest worker per core (pytest-xdist); each test pins torch to one thread in its process
# (tests/conftest.py), so the workers do not oversubscribe the cores. PYTEST_WORKERS=0 runs the suite in this
# one process.
PYTEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
