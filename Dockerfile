# syntax=docker/dockerfile:1.7
# The ASE serving image: ONNX Runtime + FastAPI, no torch, non-root, demo model baked in.
#
#   docker build -t ase-serve:cpu .                          # CPU (the default)
#   docker build -t ase-serve:cuda --build-arg VARIANT=cuda .  # CUDA 13 + cuDNN 9 (onnxruntime-gpu)
#   docker build -t ase-serve:ray --build-arg VARIANT=ray .    # + Ray Serve and Ray Data (deploy/ray)
#
# Every variant installs the same serving lock (requirements/serve.txt, `make lock`: the versions
# the tests ran) and then the project without dependencies; onnxruntime-gpu runs on the CPU
# provider where no GPU is present, so only the base image and the default providers differ.
# The ray variant adds requirements/ray.txt on top (ray[serve,data] at the same versions): the
# image of the Ray nodes, which run the server as Serve replicas (server/ray_app.py).
# tests/monitoring/test_dockerfile.py replays the builder stage's RUN steps in a fresh venv.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---- base images: a python3 with venv support, nothing else --------------------------------
FROM ${PYTHON_IMAGE} AS base-cpu
ENV ASE_PROVIDERS=cpu

# The Ray nodes' image: the CPU base (with bash, which KubeRay starts `ray start` through).
FROM ${PYTHON_IMAGE} AS base-ray
ENV ASE_PROVIDERS=cpu

FROM ${CUDA_IMAGE} AS base-cuda
# Ubuntu 24.04's python3 is 3.12, which the project supports (requires-python >= 3.11).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV ASE_PROVIDERS=cuda,cpu

# ---- builder: the serving install into /opt/venv ------------------------------------------
FROM base-${VARIANT} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
ARG VENV=/opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
ARG VARIANT
COPY requirements/serve.txt requirements/ray.txt ./requirements/
COPY model ./model
COPY export ./export
COPY server ./server
RUN python3 -m venv ${VENV}
RUN ${VENV}/bin/pip install -r requirements/serve.txt
RUN if [ "${VARIANT}" = ray ]; then ${VENV}/bin/pip install -r requirements/ray.txt; fi
RUN ${VENV}/bin/pip install --no-deps .
RUN ${VENV}/bin/pip check
# The serving image must stay torch-free: fail the build if a dependency pulled it in.
RUN ${VENV}/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---- runtime ------------------------------------------------------------------------------
FROM base-${VARIANT} AS runtime
ARG VENV=/opt/venv
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin ase
COPY --from=builder ${VENV} ${VENV}
COPY demo/model /opt/ase/models/demo
ENV PATH=${VENV}/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ASE_MODEL_DIR=/opt/ase/models/demo
WORKDIR /opt/ase
USER ase
EXPOSE 8000
# Ready means the model is loaded and warmed; compose's depends_on waits on it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as r; r.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# The model directory comes from ASE_MODEL_DIR (the demo, or a mounted one); see docs/monitoring.md.
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]
