# make run   set up .venv, bring up the dev cluster (unless the machine has its own Slurm), serve
# make test  the same set-up, then the whole test suite (unit + integration on real Slurm/Apptainer)
# make conformance  the same set-up, then the whole CWL v1.2 conformance suite through WES (~20 min)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
SITE_CONFIG ?= site_config/dev.yaml
PYTEST_ARGS ?=
FUZZ_EXAMPLES ?= 25
CONFORMANCE_JOBS ?= 3

.PHONY: run test unit conformance venv cluster clean

venv: $(STAMP)

# Reinstalls only when the project's metadata changes; a second `make test` installs nothing.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

cluster:
	@if [ "$$(id -u)" -eq 0 ]; then dev/cluster ensure; \
	elif command -v sbatch >/dev/null; then echo "[make] not root: using this machine's Slurm"; \
	else echo "[make] no Slurm here and not root: cannot set up the dev cluster" >&2; exit 1; fi

run: venv cluster
	$(VENV)/bin/hpc-bridge serve --config $(SITE_CONFIG)

# pytest exits 5 when it collected nothing: say so, and fail like any other error.
test: venv cluster
	@HPCB_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "[make] pytest collected no tests: failing" >&2; fi; exit $$rc

conformance: venv cluster
	$(VENV)/bin/python dev/cwl-conformance -j $(CONFORMANCE_JOBS)

unit: venv
	$(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
