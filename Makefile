# Two commands for users: `make book` (the study) and `make test` (the test suite).
# Each sets up .venv on first use (pip install -e .[book,test]) and is fast once installed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
STAMP := $(VENV)/.installed

.PHONY: install test book screenshot benchmarks bench-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is required, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[book,test]'
	touch $@

# Unit tests, the paper-profile dry run and the smoke-book build (tests/), then nbval on the committed smoke executions
# (results/smoke/*.ipynb, refreshed by `make book PROFILE=smoke`), comparing the cells marked # NBVAL_CHECK_OUTPUT.
# Re-executed notebooks write their results under runs/pipeline/ (ignored), never into results/.
test: $(STAMP)
	$(PY) -m pytest
	$(PY) -m pytest --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg results/smoke

# Run the plan's stale columns with papermill (results/$(PROFILE)/), then render _build/html with jupyter-book.
book: $(STAMP)
	$(PY) -m repro.pipeline --profile $(PROFILE)
	$(PY) -m repro.pipeline --build-book --profile $(PROFILE)

screenshot: $(STAMP)
	$(PY) -m repro.pipeline --screenshot --profile $(PROFILE)

benchmarks: $(STAMP)
	$(PY) benchmarks/attacks.py
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/gpu.py
	$(PY) benchmarks/optimality.py

# The optimality benchmark's oracle libraries (benchmarks/optimality.py). adv-lib imports visdom, whose sdist only
# builds with setuptools < 81 (it needs pkg_resources): build that wheel in a throwaway venv, then install.
bench-deps: $(STAMP)
	rm -rf .bench-build && $(PYTHON) -m venv .bench-build
	.bench-build/bin/pip install --quiet 'setuptools<81' wheel
	.bench-build/bin/pip wheel --quiet --no-deps --no-build-isolation visdom -w .bench-build/wheels
	$(PY) -m pip install --quiet .bench-build/wheels/visdom-*.whl adv-lib adversarial-robustness-toolbox torchattacks
	rm -rf .bench-build

clean:
	rm -rf _build .pytest_cache
