# The ASE serving image: ONNX Runtime + FastAPI, no torch, non-root, photo model baked in.
#
#   docker build -t ase-serve:cpu .                        # CPU (the default)
#   docker build -t ase-serve:ray --build-arg VARIANT=ray .  # + Ray Serve and Ray Data (deploy/ray)
#   docker build -t ase-serve:cuda -f Dockerfile.cuda .      # CUDA 13 + cuDNN 9 (onnxruntime-gpu)
#
# Every variant installs the same serving lock (requirements/serve.txt, `make lock`: the versions
# the tests ran) and then the project without dependencies; onnxruntime-gpu runs on the CPU
# provider where no GPU is present, so only the base image and the default providers differ.
# The ray variant adds requirements/ray.txt on top (ray[serve,data] at the same versions): the
# image of the Ray nodes, which run the server as Serve replicas (server/ray_app.py).
# The CUDA variant has its own file, Dockerfile.cuda (its base stage, then this file's builder
# and runtime stages word for word): the classic builder (DOCKER_BUILDKIT=0, Compose v1) builds
# every stage of a file, so a CUDA stage here would pull gigabytes of CUDA for a CPU image.
# No `# syntax=` line: BuildKit would fetch that frontend from a registry before anything else,
# and its built-in frontend has everything used here.
# tests/monitoring/test_dockerfile.py replays the builder stage's RUN steps in a fresh venv and
# checks the two files agree; `make compose-test` builds this file and runs the image.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- base images: a python3 with venv support, nothing else --------------------------------
FROM ${PYTHON_IMAGE} AS base-cpu
ENV ASE_PROVIDERS=cpu

# The Ray nodes' image: the CPU base (with bash, which KubeRay starts `ray start` through).
FROM ${PYTHON_IMAGE} AS base-ray
ENV ASE_PROVIDERS=cpu

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
COPY demo/photo/model /opt/ase/models/photo
# NUMBA_CACHE_DIR: numba caches the map kernels it compiles (server/resample.py), and the user
# `ase` can write neither site-packages nor a home. /tmp is writable wherever the image runs:
# the container's own layer under Docker, and the emptyDir that deploy/ mounts there over a
# read-only root filesystem (Kubernetes, KServe, KubeRay).
ENV PATH=${VENV}/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    ASE_MODEL_DIR=/opt/ase/models/photo
WORKDIR /opt/ase
USER ase
# The kernels compiled now, into that cache: containers of this image load them and are ready
# sooner (docs/benchmarks.md, time to ready); on another kind of CPU, or under an emptyDir /tmp,
# numba compiles them again at start.
RUN python -c "from server.maps import compile_kernels; compile_kernels()"
EXPOSE 8000
# Ready means the model is loaded and warmed; compose's depends_on waits on it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as r; r.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# The model directory comes from ASE_MODEL_DIR (the photo model, or a mounted one); see docs/monitoring.md.
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]
