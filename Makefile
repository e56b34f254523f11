# The two commands a user needs: `make serve` and `make test`. Both build their own venv.
PYTHON ?= python3.11
VENV ?= .venv
SERVE_VENV ?= .venv-serve
PIP_FLAGS ?= --disable-pip-version-check -q
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: test lint serve clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(VENV)/bin/pip install $(PIP_FLAGS) torch==2.13.0
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[train,serve,dev,bench]'
	touch $@

$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install $(PIP_FLAGS) -e '.[serve]'
	touch $@

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

serve: $(SERVE_VENV)/.installed
	$(SERVE_VENV)/bin/python -m server --host $(HOST) --port $(PORT)

clean:
	rm -rf $(VENV) $(SERVE_VENV)
