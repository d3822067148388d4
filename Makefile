# cloudlab: the two commands are `make lab` (or headless `make demo`) and `make test`.
# Every target runs the same idempotent set-up first (scripts/bootstrap.sh).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STATE ?= $(CURDIR)/.cloudlab
NETWORK ?= direct# the lab's cloud: direct (bridges), vde, or none
PYTEST_ARGS ?=

.PHONY: setup lab demo test bench lint clean down

setup:
	@bash scripts/bootstrap.sh

lab: setup
	$(BIN)/cloudlab --state $(STATE) up --network $(NETWORK)
	CLOUDLAB_STATE=$(STATE) $(BIN)/jupyter lab --ServerApp.root_dir=notebooks --ip=127.0.0.1 --allow-root \
		--LabApp.default_url=/lab/tree/quickstart.ipynb $(LAB_ARGS)

demo: setup
	@mkdir -p results
	$(BIN)/cloudlab --state $(STATE) up --network $(NETWORK)
	CLOUDLAB_STATE=$(STATE) $(BIN)/papermill --log-output -k cloudlab notebooks/demo.ipynb results/demo.ipynb \
		|| { $(BIN)/cloudlab --state $(STATE) down; exit 1; }
	$(BIN)/cloudlab --state $(STATE) down

test: setup
	$(BIN)/ruff check cloudlab tests
	$(BIN)/pytest $(PYTEST_ARGS)

bench: setup
	@mkdir -p results
	$(BIN)/python -m cloudlab.bench --output results

lint: setup
	$(BIN)/ruff check cloudlab tests

down:
	$(BIN)/cloudlab --state $(STATE) down

clean: down
	rm -rf results .pytest_cache
