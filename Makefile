# Everything runs inside .venv so a fresh machine needs only python3.
# Installs come from the hash-locked files in requirements/ (made by `make lock` from
# pyproject.toml's ranges): an upstream release never changes what `make test` runs.
# `make test-latest` runs the same suite on the newest releases, in .venv-latest, on purpose.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/test.txt
# Build tools first (from their own lock), so that sdists build with them, not with
# whatever setuptools is newest (--no-build-isolation).
PIP_LOCKED = --quiet --require-hashes --no-deps --no-build-isolation

.PHONY: test test-latest lint unit integration demo bench bench-scale fuzz fuzz-smoke docs lock idl clean interop-apache

$(STAMP): $(LOCK) requirements/build.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_LOCKED) -r requirements/build.txt
	$(BIN)/python -m pip install $(PIP_LOCKED) -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Refreshes every lock from pyproject.toml (newest releases within its ranges); commit the
# result once `make test` is green on it. Each group's file includes what `make` needs for it.
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --no-header --upgrade
lock: $(STAMP)
	$(UV_COMPILE) requirements/build.in -o requirements/build.txt
	$(UV_COMPILE) pyproject.toml -o requirements/runtime.txt
	$(UV_COMPILE) pyproject.toml --extra test --extra dev --extra docs -o requirements/test.txt
	$(UV_COMPILE) pyproject.toml --extra test --extra dev --extra docs --extra bench -c requirements/test.txt \
		-o requirements/bench.txt
	$(UV_COMPILE) pyproject.toml --extra test --extra dev --extra fuzz -c requirements/test.txt \
		-o requirements/fuzz.txt

# The suite on the newest releases (no lock): what the next `make lock` would bring.
test-latest:
	rm -rf .venv-latest && $(PY) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	.venv-latest/bin/python -m pip install --quiet --upgrade -e '.[test,dev,docs]'
	$(MAKE) test VENV=.venv-latest STAMP=.venv-latest/bin/python

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Two test processes, one test file each at a time (a file's module-scoped Redis, cluster or
# namespaces stay in one process): most integration tests wait on timers, not on the CPU,
# so two share 2 cores well and the suite takes about half as long.
PYTEST := $(BIN)/pytest -n 2 --dist loadfile

test: lint
	$(PYTEST)

unit: $(STAMP)
	$(PYTEST) -m 'not integration'

integration: $(STAMP)
	$(PYTEST) -m integration

demo: $(STAMP)
	$(BIN)/gateway demo

# Apache Thrift's own cross-test (test/py TestClient x TestServer) through `gateway serve`, in
# every protocol x transport its test/tests.json lists for py, in passthrough, coalesce and
# cache modes (docs/dialects.md, "Apache Thrift's cross-test"). APACHE_THRIFT is a tree of the pinned release, never
# in this repository: git archive v0.17.0 test lib/py lib/nodejs | tar -x -C /tmp/apache-thrift-0.17.0
# Its own lib/py (accelerated protocols included) is installed into a venv inside that tree,
# the Node.js client's npm packages into node_modules there; the C++ client is built with g++
# (apt: libthrift-dev libboost-program-options-dev libboost-filesystem-dev libevent-dev).
APACHE_THRIFT ?=
interop-apache: $(STAMP)
	@test -n "$(APACHE_THRIFT)" || { echo "interop-apache: set APACHE_THRIFT=/path/to/apache-thrift-0.17.0" >&2; exit 1; }
	test -x $(APACHE_THRIFT)/.venv-py/bin/python || { $(PY) -m venv $(APACHE_THRIFT)/.venv-py && \
		$(APACHE_THRIFT)/.venv-py/bin/python -m pip install --quiet $(APACHE_THRIFT)/lib/py; }
	$(BIN)/python -m benchmarks.crosstest $(APACHE_THRIFT) --python $(APACHE_THRIFT)/.venv-py/bin/python
	$(BIN)/python -m benchmarks.crosstest $(APACHE_THRIFT) --python $(APACHE_THRIFT)/.venv-py/bin/python \
		--language cpp
	test -d $(APACHE_THRIFT)/node_modules/thrift || (cd $(APACHE_THRIFT) && \
		npm install --no-audit --no-fund --silent thrift@0.17.0 commander@2.20.3 tape@4.17.0)
	$(BIN)/python -m benchmarks.crosstest $(APACHE_THRIFT) --python $(APACHE_THRIFT)/.venv-py/bin/python \
		--language nodejs --node-modules $(APACHE_THRIFT)/node_modules

# `make bench BASELINE=<rev>` also runs the gateway of that git revision in the comparison.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(if $(BASELINE),--baseline-rev $(BASELINE))

# Distinct-key flights/s and CPU per call vs Redis Cluster primaries (1, 3, 6) and gateway
# nodes (1, 2, 4), plus one plain redis-server and local-only rows; a few minutes. Writes
# benchmarks/scale.json and the plot docs/scale.png (matplotlib: the bench lock).
# `make bench-scale BASELINE=<rev>` also runs every row with the gateway of that revision.
bench-scale: $(STAMP)
	$(BIN)/python -m pip install $(PIP_LOCKED) -r requirements/bench.txt
	$(BIN)/python -m benchmarks.scale --single --out benchmarks/scale.json --plot docs/scale.png \
		$(if $(BASELINE),--baseline-rev $(BASELINE))

# The manual (mkdocs.yml, docs/) as a static site in site/; tests/test_docs.py builds it the
# same way, so a broken link or anchor fails the suite too.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Coverage-guided fuzzing of the wire layer (fuzz/, needs the `fuzz` extra: atheris), one
# target at a time under nice: FUZZ_RUNS executions each, new inputs and crashes in
# $(FUZZ_WORK) (the committed seeds in fuzz/corpus/ are only read); FUZZ_TIME=<seconds>
# time-boxes each target. FUZZ_STRICT=1 also checks the invariants of known, not yet fixed
# defects (fuzz/model.py: KNOWN_DEFECTS).
# `make fuzz-smoke` is the quick pass the test suite runs (tests/test_fuzz.py).
FUZZ_TARGETS ?= framing theader binscan walk callkey transcode
FUZZ_RUNS ?= 1000000
FUZZ_WORK ?= .fuzz
FUZZ_FLAGS ?= -max_len=1024 -timeout=10 -rss_limit_mb=1024 -print_final_stats=1
fuzz: $(STAMP)
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install $(PIP_LOCKED) -r requirements/fuzz.txt
	set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p $(FUZZ_WORK)/$$t $(FUZZ_WORK)/crashes; \
		echo "== fuzz $$t"; \
		nice -n 15 $(BIN)/python -m fuzz.run $$t -runs=$(FUZZ_RUNS) $(FUZZ_FLAGS) \
			$(if $(FUZZ_TIME),-max_total_time=$(FUZZ_TIME)) \
			-artifact_prefix=$(FUZZ_WORK)/crashes/$$t- $(FUZZ_WORK)/$$t fuzz/corpus/$$t; \
	done

fuzz-smoke: $(STAMP)
	$(BIN)/pytest -q tests/test_fuzz.py

# Regenerates the committed example code; needs Debian's thrift-compiler (0.17).
# Each IDL file becomes a package named after it (gateway.examples.gen.supervisor, ...) whose
# modules import each other relatively, so no namespace line is needed. The *-remote scripts
# are dropped: they drive the blocking generated client, which py:twisted does not produce.
# Generation goes to a scratch directory that replaces $(GEN) only once it all succeeded, so
# a missing or failing compiler leaves the committed code alone. `make idl GEN=/tmp/x`
# generates elsewhere (tests/test_idl.py compares that with the committed tree).
THRIFT ?= thrift
GEN ?= gateway/examples/gen

idl:
	@command -v $(THRIFT) >/dev/null || { echo "idl: $(THRIFT) not found (apt-get install thrift-compiler)" >&2; exit 1; }
	rm -rf $(GEN).tmp && mkdir -p $(GEN).tmp
	$(THRIFT) --gen py:twisted -out $(GEN).tmp idl/supervisor.thrift
	$(THRIFT) --gen py:twisted -out $(GEN).tmp idl/poetry.thrift
	rm -f $(GEN).tmp/*/*-remote
	printf '"""Generated by `make idl` from idl/*.thrift; do not edit."""\n' > $(GEN).tmp/__init__.py
	rm -rf $(GEN) && mv $(GEN).tmp $(GEN)

clean:
	rm -rf $(GEN).tmp $(VENV) .venv-latest .fuzz .mypy_cache .ruff_cache .pytest_cache .hypothesis
