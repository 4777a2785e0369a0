# make run   set up .venv, bring up the dev cluster (unless the machine has its own Slurm), serve
# make test  the same set-up, then the whole test suite (unit + integration on real Slurm/Apptainer)
# make bench-smoke  the same set-up, then every bench/ script at a tiny size (tests/integration/test_bench.py):
#            no speed is asserted, only that each runs and prints every figure; .ci/run runs it after `make test`
# make conformance  the same set-up, then the whole CWL v1.2 conformance suite through WES (~20 min)
# make lint  ruff (hpc_bridge, tests, bench, dev) and mypy --strict (hpc_bridge): 0 findings, or it fails
# make lock  resolve pyproject.toml again (newest versions on PyPI) into requirements.lock; then run `make test`
# make lock-clients  resolve dev/clients/*.in (the real clients the tests drive, e.g. Snakemake) into their locks
# make compliance SUITE=DIR RUNNER=CMD  the GA4GH TES compliance suite against hpc-bridge (dev/tes-compliance):
#            DIR a checkout of openapi-test-runner with the runner installed as CMD (not on PyPI; bring it)
SHELL := /bin/bash
# The system's Python, which every user can run: WES engines and the per-user service run from this
# venv as other Unix users (a Python under /root, e.g. pyenv's, is unreadable to them).
PYTHON ?= /usr/bin/python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
# Every install comes from the lock: exact versions with their hashes (pip itself and the build backend too).
LOCK := requirements.lock
LOCK_PYTHON := 3.11
LOCK_VENV := .venv-lock
PIP_TOOLS := pip-tools==7.7.0
LOCK_ARGS ?= --upgrade
SITE_CONFIG ?= site_config/dev.yaml
PYTEST_ARGS ?=
FUZZ_EXAMPLES ?= 25
CONFORMANCE_JOBS ?= 3

.PHONY: run test bench-smoke unit lint conformance compliance venv lock lock-clients cluster clean

venv: $(STAMP)

# The lock's Python: its markers and wheels were resolved for it.
check_python = $(1) -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$(LOCK_PYTHON)".split("."))))' \
	|| { echo "[make] $(LOCK) is for Python $(LOCK_PYTHON); $(1) is $$($(1) -V)" >&2; exit 1; }

# Reinstalls only when the lock or the project's metadata changes; a second `make test` installs nothing.
# First the lock's pip (by the venv's bundled one), then every package of the lock with hash checking and
# no resolving, then the project itself, built by the lock's hatchling. An existing .venv is updated in
# place (`make clean venv` for one that holds the lock's packages and nothing else).
$(STAMP): $(LOCK) pyproject.toml
	@base() { "$$1" -c 'import sys; print(sys.base_prefix)'; }; \
	if [ -x $(VENV)/bin/python ] && [ "$$(base $(VENV)/bin/python)" != "$$(base $(PYTHON))" ]; then \
		echo "[make] $(VENV) was made from another Python than $(PYTHON): making it again"; rm -rf $(VENV); fi
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	@$(call check_python,$(VENV)/bin/python)
	$(VENV)/bin/python -m pip install --quiet --require-hashes --no-deps \
		-r <(awk '/^pip==/ {p = 1} p {print} p && !/\\$$/ {exit}' $(LOCK))
	$(VENV)/bin/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -m pip check
	touch $@

# A fresh resolve against PyPI alone (this machine's pip configuration, extra indexes and find-links are
# left out, so the lock does not depend on the machine), with hashes of every file of each pinned version.
# pip-tools lives in its own venv, never in the project's. `make lock LOCK_ARGS=` keeps the current pins
# and only adds what pyproject.toml newly asks for. A changed lock must pass the whole suite (`make test`).
lock: $(LOCK_VENV)/.installed-$(subst ==,-,$(PIP_TOOLS))
	env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
		CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet $(LOCK_ARGS) \
		--generate-hashes --allow-unsafe --strip-extras --extra test --build-deps-for editable \
		--no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml

# Each dev/clients/NAME.in -> NAME.lock, the same way (pins as they are unless LOCK_ARGS=--upgrade is given).
lock-clients: $(LOCK_VENV)/.installed-$(subst ==,-,$(PIP_TOOLS))
	for in in dev/clients/*.in; do \
		env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
			CUSTOM_COMPILE_COMMAND="make lock-clients" $(LOCK_VENV)/bin/pip-compile --quiet \
			--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
			--output-file "$${in%.in}.lock" "$$in" || exit 1; done

$(LOCK_VENV)/.installed-$(subst ==,-,$(PIP_TOOLS)):
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	@$(call check_python,$(LOCK_VENV)/bin/python)
	$(LOCK_VENV)/bin/python -m pip install --quiet '$(PIP_TOOLS)'
	touch '$@'

cluster:
	@if [ "$$(id -u)" -eq 0 ]; then dev/cluster ensure; \
	elif command -v sbatch >/dev/null; then echo "[make] not root: using this machine's Slurm"; \
	else echo "[make] no Slurm here and not root: cannot set up the dev cluster" >&2; exit 1; fi

run: venv cluster
	$(VENV)/bin/hpc-bridge serve --config $(SITE_CONFIG)

# pytest exits 5 when it collected nothing: say so, and fail like any other error.
BENCH_TESTS := tests/integration/test_bench.py
test: venv cluster
	@HPCB_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/python -m pytest --ignore=$(BENCH_TESTS) $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "[make] pytest collected no tests: failing" >&2; fi; exit $$rc

bench-smoke: venv cluster
	@$(VENV)/bin/python -m pytest $(BENCH_TESTS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "[make] pytest collected no bench tests: failing" >&2; fi; exit $$rc

conformance: venv cluster
	$(VENV)/bin/python dev/cwl-conformance -j $(CONFORMANCE_JOBS)

RUNNER ?= openapi-test-runner
compliance: venv cluster
	@[ -n "$(SUITE)" ] || { echo "[make] SUITE=<openapi-test-runner checkout> is needed (see dev/tes-compliance)" >&2; exit 2; }
	$(VENV)/bin/python dev/tes-compliance "$(SUITE)" --runner "$(RUNNER)"

LINT_PATHS := hpc_bridge tests bench dev/cwl-conformance dev/cwl-conformance-summary dev/tes-compliance dev/devserver.py
lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LOCK_VENV) var .pytest_cache
