# mlops-ray: `make demo` and `make test` work on a fresh machine with Python >= 3.10 and make.
PYTHON ?= $(shell for p in python3.12 python3.11 python3.10 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null && echo $$p && break; done)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_ROWS ?= 200000

.PHONY: setup demo test test-fast bench clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python >= 3.10 is required (python3 not found)"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

## demo: synthesize data (once), then run the pipeline on embedded defaults
demo: setup
	@test -d data/demo || $(BIN)/mlops-ray data synth --rows $(DEMO_ROWS) --out data/demo --seed 7
	$(BIN)/mlops-ray run configs/quickstart.yaml
	@echo "Next: serve it with '$(BIN)/mlops-ray deploy configs/quickstart.yaml' (then 'status', 'rollout', 'serve stop'; see README)"

## test: every tier (unit, one shared local Ray, slow); CI runs this
test: setup
	$(BIN)/python -m pytest

## test-fast: unit tests only (no Ray)
test-fast: setup
	$(BIN)/python -m pytest -m unit

## bench: benchmarks against their baselines; tables in benchmarks/results/
bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf .mlops data/demo benchmarks/results
