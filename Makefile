# The README's two commands are `make serve` and `make test`; .ci/run calls `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install serve test lint protos clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## Serve the demo model (trains and exports it first when the repository has none).
serve: install
	PATH=$(abspath $(BIN)):$$PATH ddrnet quickstart

## Install and run the whole test suite.
test: install
	PATH=$(abspath $(BIN)):$$PATH python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: install
	$(BIN)/ruff check .

## Regenerate the committed gRPC stubs from protos/*.proto.
protos: install
	$(BIN)/python -m protos.generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
