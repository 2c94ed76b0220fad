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

test: $(STAMP)
	$(PY) -m pytest

book: $(STAMP)
	$(PY) -m repro.run --profile $(PROFILE)
	$(PY) -m repro.run --build-book

regression: $(STAMP)
	$(PY) -m repro.run --refresh-regression

screenshot: $(STAMP)
	$(PY) -m repro.run --screenshot

benchmarks: $(STAMP)
	$(PY) benchmarks/attacks.py
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/train.py

clean:
	rm -rf _build .pytest_cache
