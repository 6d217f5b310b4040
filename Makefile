# Everything runs inside .venv so a fresh machine needs only python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint unit integration demo bench idl clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest -m 'not integration'

integration: $(STAMP)
	$(BIN)/pytest -m integration

demo: $(STAMP)
	$(BIN)/gateway demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# Regenerates the committed example code; needs Debian's thrift-compiler.
idl:
	rm -rf gateway/examples/gen && mkdir -p gateway/examples/gen
	thrift --gen py:twisted -out gateway/examples/gen idl/supervisor.thrift
	thrift --gen py:twisted -out gateway/examples/gen idl/poetry.thrift
	touch gateway/examples/gen/__init__.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
