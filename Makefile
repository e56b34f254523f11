# The two commands a user needs: `make serve` and `make test`. Both build their own venv from
# a lock (requirements/serve.txt, requirements/full.txt): the versions tests and CI ran.
# `make lock` re-resolves both locks after pyproject.toml's dependencies change.
PYTHON ?= python3.11
VENV ?= .venv
SERVE_VENV ?= .venv-serve
LOCK_VENV ?= .venv-lock
PIP_FLAGS ?= --disable-pip-version-check -q
PIP_TOOLS ?= pip-tools==7.6.2
# LOCK_ARGS=--upgrade: newest releases everywhere (default: keep the pins that still fit)
LOCK_ARGS ?=
LOCK_FLAGS = --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	--annotation-style line $(LOCK_ARGS)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: test lint serve lock clean

# The full lock pins torch 2.13.0+cpu, the CPU wheel on local disk (requirements/full.in): a
# bare `torch` would pull a multi-GB CUDA build. `pip check`: the lock covers pyproject.toml.
$(VENV)/.installed: pyproject.toml requirements/full.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -r requirements/full.txt
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps -e .
	$(VENV)/bin/pip check
	touch $@

$(SERVE_VENV)/.installed: pyproject.toml requirements/serve.txt
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install $(PIP_FLAGS) -r requirements/serve.txt
	$(SERVE_VENV)/bin/pip install $(PIP_FLAGS) --no-deps -e .
	$(SERVE_VENV)/bin/pip check
	touch $@

$(LOCK_VENV)/.installed:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install $(PIP_FLAGS) $(PIP_TOOLS)
	touch $@

# full: every extra plus requirements/full.in; serve: the serve extra at full's versions;
# ray: serve plus the ray extra at full's versions (the Dockerfile's ray variant).
lock: $(LOCK_VENV)/.installed
	$(LOCK_VENV)/bin/pip-compile $(LOCK_FLAGS) --all-extras \
		-o requirements/full.txt pyproject.toml requirements/full.in
	$(LOCK_VENV)/bin/pip-compile $(LOCK_FLAGS) --extra serve -c requirements/full.txt \
		-o requirements/serve.txt pyproject.toml
	$(LOCK_VENV)/bin/pip-compile $(LOCK_FLAGS) --extra serve --extra ray \
		-c requirements/full.txt -o requirements/ray.txt pyproject.toml

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

serve: $(SERVE_VENV)/.installed
	$(SERVE_VENV)/bin/python -m server --host $(HOST) --port $(PORT)

clean:
	rm -rf $(VENV) $(SERVE_VENV) $(LOCK_VENV)
