"""The server's one settings class: environment variables (prefix ``ASE_``), overridden by
``python -m server`` flags. Every value is checked here, so a bad one stops the server at start."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.repository import VersionPolicy

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL_DIR = REPO_ROOT / "demo" / "model"
DEMO_PHOTO_MODEL_DIR = REPO_ROOT / "demo" / "photo" / "model"
DEMO_REPOSITORY = REPO_ROOT / "demo" / "models"  # its models are links to demo/ folders
DEMO_DEFAULT_MODEL = "ase-photo"  # the demo repository's model for /predict without ?model=
DEMO_SAMPLES_DIR = REPO_ROOT / "demo" / "samples"

PROVIDER_ALIASES = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ASE_", extra="forbid", frozen=True)

    model_dir: Path | None = Field(
        None,
        description="one exported model directory (contract 3), served as a repository of one "
        "(its metadata's name, version 1); with neither this nor model_repository: the demo "
        "repository, demo/models",
    )
    model_repository: Path | None = Field(
        None,
        description="a model repository in Triton's layout: DIR/<name>/<version>/ each a "
        "model directory (a bare DIR/<name>/ is version 1)",
    )
    model_control_mode: Literal["none", "explicit", "poll"] = Field(
        "none",
        description="none: the models found at start; explicit: loaded and unloaded through "
        "the repository API (/v2/repository, gRPC); poll: the repository watched, changes "
        "applied (Triton's --model-control-mode)",
    )
    repository_poll_s: float = Field(
        15.0, gt=0, le=3600, description="poll mode: seconds between looks at the repository"
    )
    model_version_policy: str = Field(
        "latest:1",
        description="versions served of each model: latest:N (the N highest), all, or "
        "specific:V[,V...] (Triton's version_policy)",
    )
    models: str | None = Field(
        None,
        description="the repository's models loaded at start, comma-separated (default: all; "
        "Triton's --load-model); in none and poll modes the only ones served",
    )
    default_model: str | None = Field(
        None,
        description="the model /predict serves without ?model= (default: in the demo "
        "repository, ase-photo; else the first served, by name)",
    )
    model_memory_mb: int = Field(
        0,
        ge=0,
        description="memory for the weights of every model version loaded, MiB per worker; a "
        "load past it fails (0: the memory limit less memory_budget_mb, at least a quarter "
        "of the limit)",
    )
    samples_dir: Path = Field(
        DEMO_SAMPLES_DIR, description="sample images offered by the page (may be absent)"
    )
    providers: str = Field(
        "cuda,cpu",
        description="ONNX Runtime execution providers in order of preference, comma-separated "
        "(cuda, tensorrt, cpu or full names); the ones not available are skipped",
    )
    threads: int = Field(
        0, ge=0, description="ORT intra-op threads per model instance (0: ORT decides)"
    )
    instances: int = Field(
        1,
        ge=1,
        le=64,
        description="model instances per worker: ORT sessions side by side, the next free one "
        "running the next batch (Triton's instance count; e.g. one per core, threads=1)",
    )
    ort_spin: Literal["brief", "always", "never"] = Field(
        "brief",
        description="how ORT's threads wait for work: brief (spin at most 100 us, then sleep), "
        "always (ORT's default: spin on, taking cores from decoding and encoding), never",
    )
    render_threads: int = Field(
        0, ge=0, description="threads encoding response maps, all tasks at once (0: one per core)"
    )
    max_batch: int = Field(8, ge=1, le=256, description="most images in one model call")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="longest a batch waits to fill (0: run as soon as the model is free; "
        "requests arriving while it runs form the next batch)",
    )
    max_queue: int = Field(64, ge=1, description="requests allowed to wait; past it: 503")
    timeout_s: float = Field(30.0, gt=0, description="per-request deadline; past it: 504")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request's head must arrive within this of the connection's start (or "
        "of its first byte, on a kept-alive connection); past it: 408, closed",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a request's whole body must arrive within this of its head; past it: "
        "408, closed",
    )
    send_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a client that reads none of its response for this long is dropped, and "
        "the response's memory released",
    )
    max_connections: int = Field(
        512,
        ge=1,
        description="HTTP connections open at once per worker; past it a new one gets 503 with "
        "Retry-After and is closed",
    )
    max_body_bytes: int = Field(20 * 2**20, ge=1024, description="largest request body; 413")
    max_pixels: int = Field(40_000_000, ge=1, description="largest decoded image (w*h); 413")
    memory_budget_mb: int = Field(
        0,
        ge=0,
        description="memory for the images and maps of requests in flight, MiB per worker; a "
        "request waits for its share (up to max_queue wait) or gets 503 (0: half of the "
        "container's memory limit, or of the machine's, divided among the workers)",
    )
    return_freed_memory: Literal["idle", "always", "never"] = Field(
        "idle",
        description="giving freed memory back to the OS (glibc): idle (malloc_trim once no "
        "request has held memory for 1 s), always (every buffer over 128 KiB its own mapping: "
        "RSS follows the requests, each pays page faults), never (glibc's default: a burst's "
        "buffers stay with the process)",
    )
    png_compression: int = Field(
        1,
        ge=0,
        le=9,
        description="PNG maps' deflate level: 0 none, 1-3 ISA-L (fast), 4-9 zlib (smaller)",
    )
    api_key: SecretStr | None = Field(None, description="when set, required in X-API-Key")
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="port of the Open Inference Protocol's gRPC service (KServe V2; 0: any free "
        "port); unset: no gRPC. The REST form is always on the HTTP port under /v2",
    )
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind (0: any free port)")
    workers: int = Field(1, ge=1, le=64, description="server processes (metrics: multiprocess)")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="longest drain on SIGTERM")
    log_level: str = Field("info", description="critical, error, warning, info or debug")
    # Ray only: Serve replicas (server/ray_app.py), each one server, and batch actors (batch_ray)
    ray_num_cpus: float = Field(
        1.0,
        gt=0,
        description="Ray: CPUs each replica (or batch actor) reserves; also its ORT "
        "and render threads where threads / render_threads are 0",
    )
    ray_num_gpus: float = Field(
        0.0, ge=0, description="Ray: GPUs each replica (or batch actor) reserves"
    )
    ray_min_replicas: int = Field(1, ge=0, description="Ray Serve: fewest replicas")
    ray_max_replicas: int = Field(4, ge=1, description="Ray Serve: most replicas")
    ray_target_ongoing_requests: float = Field(
        8.0,
        gt=0,
        description="Ray Serve: requests in flight per replica the autoscaler aims at "
        "(a full batch at the default max_batch)",
    )
    ray_max_ongoing_requests: int = Field(
        32,
        ge=1,
        description="Ray Serve: most requests a replica holds at once; the rest wait "
        "in Serve's queue (up to max_queue of them, then 503)",
    )

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        names = [p.strip() for p in value.split(",") if p.strip()]
        if not names:
            raise ValueError("at least one provider is needed, e.g. 'cpu'")
        for name in names:
            if name.lower() not in PROVIDER_ALIASES and not name.endswith("ExecutionProvider"):
                known = ", ".join(PROVIDER_ALIASES)
                raise ValueError(f"unknown provider {name!r}; use {known} or a full ORT name")
        return ",".join(names)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError(f"unknown log level {value!r}")
        return value.lower()

    @field_validator("api_key")
    @classmethod
    def _no_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is None or value.get_secret_value() else None

    @field_validator("model_version_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        return str(VersionPolicy.parse(value))

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: str | None) -> str | None:
        names = [name.strip() for name in (value or "").split(",") if name.strip()]
        return ",".join(names) or None

    @model_validator(mode="after")
    def _one_repository(self) -> Settings:
        if self.model_dir is not None and self.model_repository is not None:
            raise ValueError("set model_dir (one model) or model_repository, not both")
        if self.model_control_mode == "explicit" and self.workers > 1:
            raise ValueError(
                "model_control_mode explicit needs workers 1: a load call reaches one worker"
            )
        return self

    @property
    def uses_demo_repository(self) -> bool:
        """No model flag given: the committed demo repository is served (``DEMO_REPOSITORY``)."""
        return self.model_dir is None and self.model_repository is None

    @property
    def model_names(self) -> list[str] | None:
        """The ``models`` setting as a list; None: every model."""
        return self.models.split(",") if self.models else None

    @model_validator(mode="after")
    def _replica_range(self) -> Settings:
        if self.ray_min_replicas > self.ray_max_replicas:
            raise ValueError(
                f"ray_min_replicas ({self.ray_min_replicas}) exceeds ray_max_replicas "
                f"({self.ray_max_replicas})"
            )
        return self

    @property
    def provider_list(self) -> list[str]:
        """Full ORT provider names, in order of preference."""
        return [PROVIDER_ALIASES.get(p.lower(), p) for p in self.providers.split(",")]

    def per_ray_actor(self) -> Settings:
        """The settings one Ray replica or batch actor runs with: threads left at 0 ("one per
        core") would let each use every core of its node, so each gets the CPUs it reserves."""
        cores = max(1, math.ceil(self.ray_num_cpus))
        update = {name: cores for name in ("threads", "render_threads") if not getattr(self, name)}
        return self.model_copy(update=update)

    def to_env(self) -> dict[str, str]:
        """The settings as ``ASE_*`` variables: how worker processes receive them."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"ASE_{name.upper()}"] = str(value)
        return env
