# Two commands for users: `make book` (the study) and `make test` (the test suite).
# Each sets up .venv on first use (pip install -e .[book,test]) and is fast once installed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
STAMP := $(VENV)/.installed

.PHONY: install test book screenshot benchmarks bench-deps clean lock

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is required, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[book,test]'
	touch $@

# Unit tests, the paper-profile dry run and the smoke-book build (tests/), then nbval on the committed smoke executions
# (results/smoke/*.ipynb, refreshed by `make book PROFILE=smoke`), comparing the cells marked # NBVAL_CHECK_OUTPUT.
# Re-executed notebooks write their results under runs/pipeline/ (ignored), never into results/.
# Hermetic: the training cache is a new empty folder (removed afterwards), so the checks see what a new machine sees
# and every trained model comes from results/<profile>/models/ or is trained in the run. To keep a cache between runs
# (faster, not hermetic): make test TEST_CACHE=~/.cache/repro
TEST_CACHE ?=
test: $(STAMP)
	@set -e; cache="$(TEST_CACHE)"; \
	if [ -z "$$cache" ]; then cache=$$(mktemp -d); trap 'rm -rf "$$cache"' EXIT; fi; \
	echo "training cache for the tests: $$cache"; \
	REPRO_CACHE="$$cache" $(PY) -m pytest; \
	REPRO_CACHE="$$cache" $(PY) -m pytest --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg results/smoke

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

# Rewrite constraints.txt from the current .venv (after `pip install -U ...` there): the versions the committed
# results are computed with. Recompute the results after an upgrade (their provenance records the versions).
lock:
	@{ echo "# The versions the committed results were computed with (make lock writes it from .venv; make install uses it)."; \
	  $(PY) -m pip freeze --exclude-editable --exclude repro | grep -v '^-e '; } > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt

clean:
	rm -rf _build .pytest_cache
