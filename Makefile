# repnext: `make paper_tables` (the main job) and `make test`; both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,notebooks,cluster,export
STAMP := $(VENV)/.installed-$(EXTRAS)
PYTEST_ARGS ?=
# one OpenMP thread per process: two spinning threads beside another busy process slow steps 20-60x
export OMP_NUM_THREADS ?= 1

SLURM_DIR ?= .slurm
# `make test` starts the local SLURM cluster of slurm/local-up.sh when it can (root with apt-get) so the
# slurm tests run; SLURM_LOCAL=0 skips that (the slurm tests then skip unless another cluster answers).
SLURM_LOCAL ?= auto
# nodes beside the default single node: 2 gives node1 and node2 (own network namespaces, partition multi)
# for tests/test_multinode.py; 1: the single node only
SLURM_NODES ?= 2

.PHONY: env test test-fast paper_tables models bench lint clean slurm-up slurm-down

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch torchvision
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

test: env  ## everything, slow tests included (SLURM and notebook end-to-end tests too)
	@if [ "$(SLURM_LOCAL)" != 0 ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		bash slurm/local-up.sh $(SLURM_DIR) --nodes $(SLURM_NODES) \
			|| { [ "$(SLURM_NODES)" != 1 ] && echo "no $(SLURM_NODES)-node cluster: the multi-node tests will skip" \
				&& bash slurm/local-up.sh $(SLURM_DIR) --nodes 1; } \
			|| echo "local SLURM cluster did not start: the slurm tests will skip"; fi
	@if [ -f $(SLURM_DIR)/env.sh ]; then . $(SLURM_DIR)/env.sh; fi; $(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test-fast: env  ## the inner loop: skips tests marked slow
	@if [ -f $(SLURM_DIR)/env.sh ]; then . $(SLURM_DIR)/env.sh; fi; $(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

CLUSTER ?= local
PROFILE ?= smoke
# every spec in ablations/specs/ (and paper_tables/README.md, the index); TABLES=imagenet,srp for some
TABLES ?= all

paper_tables: env models  ## every table through the ablation runner (cached runs are not redone)
	@start=$$(date +%s); $(BIN)/python ablations/run.py --table $(TABLES) --cluster $(CLUSTER) --profile $(PROFILE); \
		rc=$$?; echo "make paper_tables: $$(( $$(date +%s) - start )) s wall"; exit $$rc

# measured again only when the models, the counting, timm/torch or the paper's numbers changed: models.json
# keeps the fingerprint of what both files were made from (file dates would recount in every fresh clone);
# models.json: the exact counts, which the runs read instead of counting again
models: env
	@$(BIN)/python -m repnext.counts paper_tables/models.md paper_tables/models.json \
		|| $(BIN)/python -m repnext.models --output paper_tables/models.md --counts paper_tables/models.json --quiet

bench: env  ## speed figures (not tests): forms vs timm references, smoke training
	$(BIN)/python -m repnext.bench
	$(BIN)/python benchmarks/smoke_train.py

lint: env
	$(BIN)/ruff check repnext ablations tests benchmarks

slurm-up:  ## a SLURM cluster on this machine (root; installs munge/slurm with apt): SLURM_NODES=1 for one node
	bash slurm/local-up.sh $(SLURM_DIR) --nodes $(SLURM_NODES)

slurm-down:
	bash slurm/local-down.sh $(SLURM_DIR)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
