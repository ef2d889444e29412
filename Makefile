# `make demo` and `make test` set up .venv (CPU torch 2.13.0) on first use, then run.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.perturbloop-installed
# Real data: $PERTURBLOOP_DATA_DIR, else ../shared/data beside the checkout when it exists.
DATA_DIR ?= $(or $(PERTURBLOOP_DATA_DIR),$(wildcard $(abspath ../shared/data)))
export PERTURBLOOP_DATA_DIR := $(DATA_DIR)

.PHONY: demo test test-fast install clean test-system-deps

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build on this machine's disk; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/perturbloop demo

test: $(STAMP)
	$(PY) -m pytest

# everything but the tests marked slow (subprocess campaigns, crash injection, servers, browser, Dask)
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# Debian packages for the browser and PostgreSQL tests (needs root and apt; skipped otherwise,
# and those tests then skip with the reason).
SYSTEM_DEPS := chromium chromium-driver postgresql
test-system-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then echo "installing $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	else echo "test-system-deps: not root or no apt-get: browser/PostgreSQL tests will skip"; fi

clean:
	rm -rf runs .pytest_cache
