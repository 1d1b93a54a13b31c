# zonefarm: `make up` deploys and runs the platform here; `make test` runs the whole suite.
# Both install everything they need (Debian packages, the venv, Ansible collections).

SHELL      := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV       ?= .venv
PY         := $(VENV)/bin/python
PIP        := $(VENV)/bin/pip
PYTHON3    ?= python3
VAR        ?= $(CURDIR)/var
PYTEST_ARGS ?=

# Debian packages: the test PostgreSQL server, the load generator, sshd for SFTP
# uploads, the supervisor that runs services where systemd is not PID 1, Docker for
# container tasks and the lab, debootstrap for the lab image.
APT_PACKAGES := postgresql wrk openssh-server openssh-client supervisor docker.io \
                debootstrap rsync sudo python3-venv procps iproute2 sshfs libnfs-utils \
                curl ca-certificates busybox-static chromium

.PHONY: help deps venv collections up down test lint bench bench-api bench-dispatch clean

help:
	@echo "make up     - install everything, then run the platform locally"
	@echo "make test   - install everything, then run the whole test suite"
	@echo "make lint   - ruff, import contracts (lint-imports), ansible-lint (production profile)"
	@echo "make bench  - run the benchmarks (results go in BENCHMARKS.md by hand)"
	@echo "make down   - stop what make up started"
	@echo "make lab    - the multi-host container lab: image, nine hosts, site.yml over SSH"

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  flock /tmp/zonefarm-apt.lock sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing"; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON3) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

collections: venv
	@if [ -x scripts/install-collections.sh ]; then VENV=$(VENV) scripts/install-collections.sh; fi

up: deps venv collections
	@if [ -x scripts/up.sh ]; then VENV=$(VENV) VAR=$(VAR) scripts/up.sh; fi

down:
	@if [ -x scripts/down.sh ]; then VENV=$(VENV) VAR=$(VAR) scripts/down.sh; fi

test: deps venv collections
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv collections
	$(VENV)/bin/ruff check control tests bench library
	$(VENV)/bin/lint-imports --no-cache
	@if [ -f .ansible-lint ]; then PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ansible-lint --profile production; fi

bench: bench-api bench-dispatch

bench-api: deps venv
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/api.py

bench-dispatch: deps venv collections
	$(PY) bench/dispatch.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# The multi-host lab (tests/lab): builds the image if its package list changed, starts the
# nine hosts, deploys site.yml over SSH and removes everything afterwards.
.PHONY: lab lab-clean
lab: deps venv collections
	$(VENV)/bin/pytest tests/lab -m lab -p no:cacheprovider $(PYTEST_ARGS)

# Remove what a crashed lab run left behind (containers and networks labelled zonefarm.lab).
lab-clean: venv
	$(PY) -m tests.lab.lab clean
