# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/twistd -n esa-tls

lint: $(STAMP)
	$(BIN)/ruff check esa_tls tests examples twisted/plugins bench
	$(BIN)/ruff format --check esa_tls tests examples twisted/plugins bench

typecheck: $(STAMP)
	$(BIN)/mypy esa_tls twisted/plugins/esa_tls_plugin.py

unit: $(STAMP)
	$(BIN)/trial -j 2 tests

test: lint typecheck unit

clean:
	rm -rf $(VENV) _trial_temp* build *.egg-info twisted/plugins/dropin.cache

# Long-run fuzzing outside CI (minutes): the attack suite's Hypothesis tests
# with many more examples, and the scanners' full checks.
.PHONY: fuzz
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=long $(BIN)/trial -j 2 tests.attacks.test_fuzz_parsers tests.attacks.test_fuzz_commands tests.attacks.test_scanners

# Benchmarks against Postfix (bench/README.md).  Run by hand; CI runs the
# short smoke run only.  Postfix rows need root and the postfix package.
.PHONY: bench bench-quick

bench: $(STAMP)
	bench/run

bench-quick: $(STAMP)
	bench/run --quick
	bench/compare --quick --only clear,relay,drain
	$(VENV)/bin/python bench/spool.py --rounds 1 --seconds 1
