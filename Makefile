# foundry-fleet: `make run` runs a fleet on its embedded defaults, `make test` runs the whole suite.
# Both install what they need: the venv and Python packages, and Debian packages when run as root.

VENV ?= .venv
ROOT ?= fleet-data
PYTHON ?= python3
BIN = $(VENV)/bin
# bubblewrap: instance sandbox; iptables: keeps instance ports off the network; util-linux: setpriv.
SYSTEM_PACKAGES = bubblewrap iptables util-linux procps
# Only for `make test`: headless Chromium (and its driver) for the browser test through the edge, and
# certutil (libnss3-tools) so that browser trusts the fleet's local CA. `make run` never needs them.
TEST_SYSTEM_PACKAGES = chromium chromium-driver libnss3-tools

.PHONY: run test bench system-deps test-system-deps clean

system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  missing=""; \
	  for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else \
	  for c in bwrap node iptables; do command -v $$c >/dev/null 2>&1 || echo "warning: $$c not found (not root, so not installed): see README"; done; \
	fi

test-system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  missing=""; \
	  for p in $(TEST_SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing for the tests:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else \
	  for c in chromium certutil; do command -v $$c >/dev/null 2>&1 || echo "warning: $$c not found (not root, so not installed): the browser test will be skipped"; done; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.test-deps: pyproject.toml $(VENV)/.run-deps
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

run: system-deps $(VENV)/.run-deps
	@[ -f $(ROOT)/fleet.toml ] || $(BIN)/foundry-fleet init --root $(ROOT)
	$(BIN)/foundry-fleet --config $(ROOT)/fleet.toml up

test: system-deps test-system-deps $(VENV)/.test-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest

bench: system-deps $(VENV)/.test-deps
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
