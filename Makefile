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
	@sh tools/apt-install.sh dovecot dovecot-imapd dovecot-pop3d
	@sh tools/apt-install.sh systemd-analyze systemd
	@sh tools/apt-install.sh promtool prometheus
	@sh tools/apt-install.sh pg_ctlcluster postgresql

demo: $(STAMP)
	$(BIN)/outagewatch demo

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

check: lint test

bench-deps: $(STAMP)
	@sh tools/apt-install.sh prometheus-blackbox-exporter prometheus-blackbox-exporter

bench: bench-deps system-deps
	$(BIN)/python -m bench.probe_cost --vs-blackbox
	$(BIN)/python -m bench.detection

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
