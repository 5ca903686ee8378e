# Developer entry points. Every target works from a fresh clone: the virtualenv is made on first use
# and the project (with its dev tools) is reinstalled only when pyproject.toml changes.
#
#   make run                      the service (API + pollers), configured from the environment / .env
#   make test [PYTEST_ARGS=...]   ruff, ruff format --check, mypy, then the whole pytest suite
#   make bench [BENCH_ARGS=...]   the load harness in benchmarks/
#   make lint | fmt | demo | migrate

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test lint fmt bench demo migrate

help:
	@echo "targets: run test bench lint fmt demo migrate install"
	@echo "  make test PYTEST_ARGS='-k outbox -x'    make bench BENCH_ARGS='--jobs 10000'"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml is newer than the stamp. The stamp is written last, so a failed
# install is retried on the next run.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/akool-relay serve

demo: $(STAMP)
	$(BIN)/akool-relay demo

migrate: $(STAMP)
	$(BIN)/akool-relay migrate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)
