# mlops-ray: `make demo` and `make test` work on a fresh machine with Python >= 3.10 and make.
PYTHON ?= $(shell for p in python3.12 python3.11 python3.10 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null && echo $$p && break; done)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_ROWS ?= 50000

.PHONY: setup demo test test-fast bench clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python >= 3.10 is required (python3 not found)"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

## demo: the whole loop on embedded defaults: train v1, serve it, drifted traffic, labels,
## monitor, retrain v2, gate, canary, promote, HTML report; the serving head is stopped at the end
demo: setup
	$(BIN)/mlops-ray demo configs/quickstart.yaml --rows $(DEMO_ROWS) --data-dir data/demo --html demo-report.html

## test: every tier (unit, one shared local Ray, slow); CI runs this
test: setup
	$(BIN)/python -m pytest

## test-fast: unit tests only (no Ray)
test-fast: setup
	$(BIN)/python -m pytest -m unit

## bench: benchmarks against their baselines; tables in benchmarks/results/
bench: setup
	$(BIN)/python -m benchmarks

## docs: regenerate docs/config.md, the config reference, from the config's models
.PHONY: docs
docs: setup
	$(BIN)/python docs/gen_config.py docs/config.md

clean:
	rm -rf .mlops .mlops-demo data/demo benchmarks/results demo-report.html
