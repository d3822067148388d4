# cloudlab: the two commands are `make lab` (or headless `make demo`) and `make test`.
# Every target runs the same idempotent set-up first (scripts/bootstrap.sh).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STATE ?= $(CURDIR)/.cloudlab
NETWORK ?= direct# the lab's cloud: direct (bridges), vde, or none
PYTEST_ARGS ?=
# two workers, each test file whole on one (its module's clouds booted once), the longest files first
# (tests/scheduling.py); PYTEST_WORKERS=0 runs everything in one process
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)
UP_ARGS ?=# more options for `cloudlab up` in lab and demo, e.g. --port 0
FRESH_ARGS ?=# options for scripts/fresh-check.sh, e.g. --stage setup, --ref main, -- CMD

.PHONY: setup lab demo test bench lint clean down fresh-check

setup:
	@bash scripts/bootstrap.sh

lab: setup
	$(BIN)/cloudlab --state $(STATE) up --network $(NETWORK) $(UP_ARGS)
	CLOUDLAB_STATE=$(STATE) $(BIN)/jupyter lab --ServerApp.root_dir=notebooks --ip=127.0.0.1 --allow-root \
		--LabApp.default_url=/lab/tree/quickstart.ipynb $(LAB_ARGS)

demo: setup
	@mkdir -p results
	$(BIN)/cloudlab --state $(STATE) up --network $(NETWORK) $(UP_ARGS)
	CLOUDLAB_STATE=$(STATE) $(BIN)/papermill --log-output -k cloudlab notebooks/demo.ipynb results/demo.ipynb \
		|| { $(BIN)/cloudlab --state $(STATE) down; exit 1; }
	$(BIN)/cloudlab --state $(STATE) down

test: setup
	$(BIN)/ruff check cloudlab tests
	$(BIN)/pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

bench: setup
	@mkdir -p results
	$(BIN)/python -m cloudlab.bench --output results

lint: setup
	$(BIN)/ruff check cloudlab tests

# The set-up on a machine that has nothing else: a minimal Debian 12 root (mmdebstrap, cached in
# ~/.cache/cloudlab/fresh), a clone of this checkout, `make demo` in it as root, its table checked.
fresh-check:
	@bash scripts/fresh-check.sh $(FRESH_ARGS)

down:
	$(BIN)/cloudlab --state $(STATE) down

clean: down
	rm -rf results .pytest_cache
