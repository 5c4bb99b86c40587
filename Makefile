# The README's commands. Each sets up everything it needs on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := softhsm2 gnupg iptables

.PHONY: run down dev test setup system-deps

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## system-deps: Debian packages the tests use for real (SoftHSM2 token, gpg keys, iptables partitions)
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

## make run: a three-node cluster on 127.0.0.1 (API 8200/8210/8220, Raft 8201/8211/8221), initialized and unsealed
run: $(STAMP)
	$(PY) -m cluster --dir .cluster up --nodes 3 --base-port 8200

## make down: stop the cluster started by make run
down: $(STAMP)
	$(PY) -m cluster --dir .cluster down

## make dev: a development node on 127.0.0.1:8200 (root token "root"), like `vault server -dev`
dev: $(STAMP)
	$(VENV)/bin/vaultraft server -dev -dev-root-token-id=root

## make test: the whole test suite (layer contracts, mypy --strict, unit, integration, system)
test: $(STAMP) system-deps
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy --cache-dir /tmp/vaultraft-mypy vaultraft
	$(VENV)/bin/pytest -n 2 --dist loadfile -q -p no:cacheprovider
