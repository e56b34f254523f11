"""Local stand-ins for the base images, for machines that reach the package registries but no
container registry (CI here): each is made from Debian packages by mmdebstrap, imported and
tagged with the name the project's files use, so that the project's own Dockerfile and
docker-compose.yml build and run unchanged. An image already present is used as it is; nothing
is pulled.

- the Python base (``PYTHON_IMAGE`` in the Dockerfile): Debian bookworm's python3.11 with venv
  support, where the real one is python.org's 3.11 build on bookworm;
- Prometheus (docker-compose.yml): Debian's prometheus 2.x, with busybox's ``wget`` for the
  compose health check and the real image's entry point, user and data directory.

Inside containers TLS is checked against the stand-in's certificates, so the host's trusted
bundle is copied in: pip in the build then reaches the registries as the host does.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.container.engine import DOCKER, docker
from tests.monitoring.test_dockerfile import global_args

SUITE = "bookworm"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BUILD_TIMEOUT_S = 600
LABEL = "ase.stand-in"  # the image label that tells a stand-in from the real image


@dataclass(frozen=True)
class StandIn:
    name: str  # the image name the project's files use
    packages: tuple[str, ...]
    hooks: tuple[str, ...]  # shell commands run on the finished tree ("$1" is its root)
    config: tuple[str, ...]  # `docker import --change` instructions
    variant: str = "minbase"  # mmdebstrap's: "extract" unpacks the packages, nothing else

    def commands(self) -> tuple[list[str], list[str]]:
        """The mmdebstrap command writing the root filesystem as a tar to stdout, and the
        docker import reading it."""
        debootstrap = ["mmdebstrap", f"--variant={self.variant}", "--quiet"]
        debootstrap += [f"--include={','.join(self.packages)}"]
        stage = "extract" if self.variant == "extract" else "customize"  # extract has no later
        debootstrap += [f"--{stage}-hook={hook}" for hook in self.hooks]
        debootstrap += [SUITE, "-"]
        made_of = json.dumps(f"mmdebstrap {SUITE}: {' '.join(self.packages)}")
        changes = [*self.config, f"LABEL {LABEL}={made_of}"]
        return debootstrap, [DOCKER, "import", *(f"--change={c}" for c in changes), "-", self.name]


def python_stand_in(name: str) -> StandIn:
    return StandIn(
        name,
        ("python3.11", "python3-venv", "ca-certificates"),
        (f"copy-in {HOST_CA_BUNDLE} /etc/ssl/certs",),
        ("ENV LANG=C.UTF-8", 'CMD ["python3"]'),
    )


def prometheus_stand_in(name: str) -> StandIn:
    """Debian's prometheus unpacked with the C library it links (no maintainer scripts: the
    real image runs the binary as `nobody`, uid 65534, in /prometheus)."""
    return StandIn(
        name,
        ("libc6", "prometheus", "busybox-static"),
        (
            'ln -s busybox "$1/bin/wget"',
            'mkdir -p "$1/prometheus" && chown 65534:65534 "$1/prometheus"',
            'mkdir -p -m 1777 "$1/tmp"',
        ),
        (
            "USER 65534:65534",
            "WORKDIR /prometheus",
            "EXPOSE 9090",
            'ENTRYPOINT ["/usr/bin/prometheus"]',
            'CMD ["--config.file=/etc/prometheus/prometheus.yml", '
            '"--storage.tsdb.path=/prometheus"]',
        ),
        variant="extract",
    )


def stand_ins(compose_file: Path) -> list[StandIn]:
    """The base images the CPU image and the compose stack (without Grafana) need."""
    services = yaml.safe_load(compose_file.read_text())["services"]
    return [
        python_stand_in(global_args()["PYTHON_IMAGE"]),
        prometheus_stand_in(services["prometheus"]["image"]),
    ]


def present(name: str) -> bool:
    return docker("image", "inspect", name, check=False).returncode == 0


def is_stand_in(name: str) -> bool:
    labels = docker("image", "inspect", "--format", "{{json .Config.Labels}}", name).stdout
    return LABEL in (json.loads(labels) or {})


def build_missing(images: list[StandIn], logs: Path) -> list[str]:
    """Builds, side by side, the stand-ins whose image is absent; returns their names."""
    missing = [image for image in images if not present(image.name)]
    running = []
    for image in missing:
        debootstrap, load = image.commands()
        log = (logs / f"stand-in-{image.name.replace('/', '_')}.log").open("wb")
        producer = subprocess.Popen(debootstrap, stdout=subprocess.PIPE, stderr=log)
        consumer = subprocess.Popen(load, stdin=producer.stdout, stdout=log, stderr=log)
        producer.stdout.close()  # the import holds the pipe now
        running.append((image, producer, consumer, log))
    failed = []
    for image, producer, consumer, log in running:
        statuses = [p.wait(timeout=BUILD_TIMEOUT_S) for p in (producer, consumer)]
        log.close()
        if statuses != [0, 0]:
            failed.append(f"{image.name}: {statuses}\n{Path(log.name).read_text()[-3000:]}")
    if failed:
        raise AssertionError("stand-in images failed:\n" + "\n".join(failed))
    return [image.name for image in missing]
