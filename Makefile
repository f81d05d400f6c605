# Everyday tasks; `make ci` is what CI runs (.ci/run: fresh venv, private broker, tests).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint format broker broker-stop broker-status topics ci mutation

install:
	python3 -m venv $(VENV)
	$(PY) -m pip install -e ".[dev,rocksdb]"

test:
	$(VENV)/bin/pytest -q

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit/test_layering.py

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

broker:
	$(VENV)/bin/faultstream broker start

broker-stop:
	$(VENV)/bin/faultstream broker stop

broker-status:
	$(VENV)/bin/faultstream broker status

topics:
	$(VENV)/bin/faultstream topics create

ci:
	.ci/run

# Mutation testing of the pure core (docs/TESTING.md; [tool.mutmut] in pyproject.toml). mutmut
# names a mutant after the module it runs as, so it works on a scratch copy laid out as the
# installed package; the working tree is never mutated. One module: MUTANTS='*core.circuit*'.
MUTATION_DIR ?= .faultstream/mutation
MUTATION_JOBS ?= 1
# mutmut (3.7, 3.8) reads item._nodeid, which pytest 9 no longer has: given back for the run.
MUTMUT = $(abspath $(PY)) -c "import _pytest.nodes as n; n.Node._nodeid = property(lambda s: s.nodeid); \
	from mutmut.__main__ import cli; cli()"
mutation:
	rm -rf $(MUTATION_DIR) && mkdir -p $(MUTATION_DIR)/faultstream
	tar -c --exclude=__pycache__ faultstream tests pyproject.toml | tar -x -C $(MUTATION_DIR)
	tar -c --exclude=__pycache__ events processors projections dashboard schemas \
		| tar -x -C $(MUTATION_DIR)/faultstream
	cd $(MUTATION_DIR) && FAULTSTREAM_HYPOTHESIS_PROFILE=mutation $(MUTMUT) run \
		--max-children $(MUTATION_JOBS) $(MUTANTS) && $(MUTMUT) results
