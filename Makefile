# repnext: `make paper_tables` (the main job) and `make test`; both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,notebooks,cluster,export
STAMP := $(VENV)/.installed-$(EXTRAS)
PYTEST_ARGS ?=
# one OpenMP thread per process: two spinning threads beside another busy process slow steps 20-60x
export OMP_NUM_THREADS ?= 1

.PHONY: env test test-fast paper_tables models bench lint clean

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch torchvision
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

test: env  ## everything, slow tests included
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test-fast: env  ## the inner loop: skips tests marked slow
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

paper_tables: env models  ## regenerate every table that the project can produce so far
	@echo "paper tables written under paper_tables/"

models: env
	$(BIN)/python -m repnext.models --output paper_tables/models.md

bench: env  ## speed figures (not tests): forms vs timm references, smoke training
	$(BIN)/python -m repnext.bench
	$(BIN)/python benchmarks/smoke_train.py

lint: env
	$(BIN)/ruff check repnext tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
