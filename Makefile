# Shorthands for the README's two commands (`make serve`, `make test`); .ci/run runs the README's test line.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-dev serve test lint protos clean

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[train]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

## Serve the demo model (trains and exports it first when the repository has none).
serve: install
	PATH=$(abspath $(BIN)):$$PATH ddrnet quickstart

## Install and run the whole test suite.
test: install-dev
	PATH=$(abspath $(BIN)):$$PATH python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: install-dev
	$(BIN)/ruff check .

## Regenerate the committed gRPC stubs from protos/*.proto.
protos: install-dev
	$(BIN)/python -m protos.generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
