# Two commands for users: `make book` (the study) and `make test` (the test suite).
# Each sets up .venv on first use (pip install -e .[book,test]) and is fast once installed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
STAMP := $(VENV)/.installed

.PHONY: install test book regression screenshot benchmarks clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is required, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[book,test]'
	touch $@

# Unit tests, the paper-profile dry run and the smoke-book build (tests/), then nbval on the smoke executions of every
# notebook (tests/regression/, refreshed by `make regression`), comparing the cells marked # NBVAL_CHECK_OUTPUT.
test: $(STAMP)
	$(PY) -m pytest
	$(PY) -m pytest --nbval-lax --nbval-sanitize-with tests/regression/sanitize.cfg tests/regression

# Run the plan's stale columns with papermill (results/$(PROFILE)/), then render _build/html with jupyter-book.
book: $(STAMP)
	$(PY) -m repro.run --profile $(PROFILE)
	$(PY) -m repro.run --build-book --profile $(PROFILE)

regression: $(STAMP)
	$(PY) -m repro.run --refresh-regression

screenshot: $(STAMP)
	$(PY) -m repro.run --screenshot --profile $(PROFILE)

benchmarks: $(STAMP)
	$(PY) benchmarks/attacks.py
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/train.py

clean:
	rm -rf _build .pytest_cache
