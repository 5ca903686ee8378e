# Developer entry points. Every target works from a fresh clone: the virtualenv is made on first use
# and the project (with its dev tools) is reinstalled only when pyproject.toml or constraints.txt
# changes, at the versions pinned in constraints.txt.
#
#   make run                      the service (API + pollers), configured from the environment / .env
#   make test [PYTEST_ARGS=...]   ruff, ruff format --check, mypy, then the whole pytest suite
#   make bench [BENCH_ARGS=...]   the load harness in benchmarks/
#   make lock [LOCK_ARGS=...]     re-pin constraints.txt from pyproject.toml (LOCK_ARGS=--upgrade: newest)
#   make image-check              build and run the image for real (../shared/tools/container-check)
#   make lint | fmt | demo | migrate

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every dependency (runtime and dev) pinned, for every platform, made by `make lock`.
CONSTRAINTS := constraints.txt
# The version of uv that makes constraints.txt; raise it on purpose, like the pins themselves.
UV_VERSION := 0.13.9
PYTEST_ARGS ?=
BENCH_ARGS ?=
LOCK_ARGS ?=
CONTAINER_CHECK ?= ../shared/tools/container-check

.DEFAULT_GOAL := help
.PHONY: help install run test lint fmt bench demo migrate lock image-check

help:
	@echo "targets: run test bench lint fmt demo migrate install lock image-check"
	@echo "  make test PYTEST_ARGS='-k outbox -x'    make bench BENCH_ARGS='--jobs 10000'"
	@echo "  make lock LOCK_ARGS=--upgrade            make lock LOCK_ARGS='--upgrade-package httpx'"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml or the pins are newer than the stamp. The stamp is written last,
# so a failed install is retried on the next run.
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Resolve pyproject.toml's dependencies and the dev extra for Python 3.11+ on every platform; pins
# already in constraints.txt are kept where they still fit, unless LOCK_ARGS says --upgrade.
lock: | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--custom-compile-command 'make lock' --output-file $(CONSTRAINTS) $(LOCK_ARGS)

run: $(STAMP)
	$(BIN)/akool-relay serve

demo: $(STAMP)
	$(BIN)/akool-relay demo

migrate: $(STAMP)
	$(BIN)/akool-relay migrate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# Not part of `make test` or CI: it needs root, installs podman on first use, and takes minutes.
image-check:
	@if [ -f "$(CONTAINER_CHECK)" ]; then \
		sh "$(CONTAINER_CHECK)" .; \
	else \
		echo "make image-check: $(CONTAINER_CHECK) is absent; nothing checked"; \
	fi
