# The two commands of the README. Both set up everything they need on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev test setup

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## make dev: a development node on 127.0.0.1:8200 (root token "root"), like `vault server -dev`
dev: $(STAMP)
	$(VENV)/bin/vaultraft server -dev -dev-root-token-id=root

## make test: the whole test suite (layer contracts, unit, integration)
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -n 2 -q -p no:cacheprovider
