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

# The Debian packages the tests need (the README says the same). As root they are installed
# when their command is missing, without recommended packages, each announced with the reason
# and the list of what apt-get adds; their own system-wide services are kept from starting:
# the tests run private servers on free loopback ports.
system-deps:
	@sh tools/apt-install.sh dovecot "IMAP/POP3 probe tests run a private Dovecot" \
		dovecot-imapd dovecot-pop3d
	@sh tools/apt-install.sh postfix "mail-loop tests run a private Postfix" postfix
	@sh tools/apt-install.sh /usr/lib/dovecot/lmtp "mail-loop tests deliver through Dovecot LMTP" \
		dovecot-lmtpd
	@sh tools/apt-install.sh pg_ctlcluster "state and cluster tests run a private PostgreSQL" \
		postgresql
	@sh tools/apt-install.sh systemd-analyze "a test verifies the shipped systemd unit" systemd
	@sh tools/apt-install.sh promtool "a test checks the shipped Prometheus alert rules" \
		prometheus
	@sh tools/apt-install.sh chromium "the status page is tested in a headless browser" \
		chromium fonts-dejavu-core

demo: $(STAMP)
	$(BIN)/outagewatch demo

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

check: lint test

bench-deps: $(STAMP)
	@sh tools/apt-install.sh prometheus-blackbox-exporter \
		"the probe-cost bench compares with blackbox_exporter" prometheus-blackbox-exporter

bench: bench-deps system-deps
	$(BIN)/python -m bench.probe_cost --vs-blackbox
	$(BIN)/python -m bench.detection

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
