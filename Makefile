# Every target sets up what it needs: on a fresh machine `make test` is the whole set-up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint check bench system-deps bench-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=25.1"
	$(BIN)/python -m pip install -q -e . --group dev
	touch $@

# Dovecot for the IMAP/POP3 tests (Debian packages). As root they are installed when missing;
# the package's own system-wide Dovecot is kept from starting: the tests run their own.
system-deps:
	@if command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "Dovecot is missing: sudo apt-get install dovecot-imapd dovecot-pop3d" >&2; exit 0; fi; \
	guard=0; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  dovecot-imapd dovecot-pop3d >/dev/null; status=$$?; \
	if [ $$guard = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$status

demo: $(STAMP)
	$(BIN)/outagewatch demo

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

check: lint test

bench-deps: $(STAMP)
	@command -v prometheus-blackbox-exporter >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || { \
	  guard=0; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    prometheus-blackbox-exporter >/dev/null; \
	  if [ $$guard = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }

bench: bench-deps system-deps
	$(BIN)/python -m bench.probe_cost --vs-blackbox

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
