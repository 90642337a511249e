# RemoteGPU: `make run` starts the whole product, `make test` runs the test suite.
# Both set themselves up: virtual environment, dependencies, embedded PostgreSQL and Redis.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml agent/pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint format bench services stop-services messages clean

$(STAMP): pyproject.toml agent/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing dependencies into $(VENV) ..."
	@$(PY) -m pip install --disable-pip-version-check -e ./agent -e '.[dev]' >$(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	@$(PY) -m remotegpu.core.supervisor --port $(PORT)

test: $(STAMP)
	@bash scripts/test.sh

lint: $(STAMP)
	@$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	@$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make bench NAME=<name>  (see bench/)"; exit 2; }
	@bash scripts/with-services.sh bash -c '$(PY) manage.py migrate --no-input -v 0 && $(PY) bench/$(NAME).py'

services: $(STAMP)
	@$(PY) -m remotegpu.core.embedded start

stop-services: $(STAMP)
	@$(PY) -m remotegpu.core.embedded stop

messages: $(STAMP)
	@bash scripts/with-services.sh $(PY) manage.py makemessages -l zh_Hans -l en --ignore '.venv/*' --ignore 'static/vendor/*'
	@bash scripts/with-services.sh $(PY) manage.py makemessages -d djangojs -l zh_Hans -l en --ignore '.venv/*' --ignore 'static/vendor/*' --ignore 'staticfiles/*'
	@bash scripts/with-services.sh $(PY) manage.py compilemessages --ignore '.venv/*'

clean: stop-services
	rm -rf $(VENV) .data staticfiles .pytest_cache
