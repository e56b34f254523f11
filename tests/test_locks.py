"""The locks (requirements/*.txt, `make lock`) cover pyproject.toml and are what runs: every
dependency of every install pinned at a version its bounds accept, the serving lock at the full
lock's versions and torch-free, torch pinned to its CPU build, and this venv installed from the
full lock."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def pins(lock: str) -> dict[str, Version]:
    """Name -> pinned version of every ``name==version`` line of a lock."""
    pinned = {}
    for line in (REPO / "requirements" / lock).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            [specifier] = requirement.specifier
            assert specifier.operator == "==", f"{lock}: {line} is not a pin"
            pinned[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pinned


def required(extras: list[str], *inputs: str) -> list[Requirement]:
    """The requirements an install asks for: the project's own, its extras', extra inputs."""
    lines = [*PYPROJECT["project"]["dependencies"], *(r for e in extras for r in EXTRAS[e])]
    for name in inputs:
        text = (REPO / "requirements" / name).read_text().splitlines()
        lines += [line for line in text if line.strip() and not line.startswith("#")]
    return [Requirement(line) for line in lines]


INSTALLS = {
    "full.txt": required(list(EXTRAS), "full.in"),  # make test, .ci/run
    "serve.txt": required(["serve"]),  # make serve, the Dockerfile
    "ray.txt": required(["serve", "ray"]),  # the Dockerfile's ray variant, on top of serve.txt
}


@pytest.mark.parametrize("lock", sorted(INSTALLS))
def test_every_dependency_is_pinned_within_its_bounds(lock):
    pinned = pins(lock)
    for requirement in INSTALLS[lock]:
        if requirement.marker and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not in requirements/{lock}: run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"requirements/{lock} pins {name}=={pinned[name]}, outside {requirement}: "
            "run `make lock`"
        )


def test_the_serving_lock_is_the_full_locks_versions_without_torch():
    full, serve = pins("full.txt"), pins("serve.txt")
    assert {name: full.get(name) for name in serve} == serve
    assert "torch" not in serve and not any(name.startswith("nvidia-") for name in serve)


def test_the_ray_lock_is_the_full_locks_versions_over_the_serving_lock():
    full, serve, ray = pins("full.txt"), pins("serve.txt"), pins("ray.txt")
    assert {name: full.get(name) for name in ray} == ray
    assert {name: ray.get(name) for name in serve} == serve  # installing it on top moves nothing
    assert "ray" in ray and "ray" not in serve and "torch" not in ray


def test_torch_is_the_cpu_build():
    full = pins("full.txt")
    assert full["torch"].local == "cpu", f"torch=={full['torch']}: a CUDA build"
    # torch's CUDA builds bring nvidia-* and the "triton" compiler (not tritonclient, the
    # inference protocol's client in the dev extra).
    assert not any(name.startswith("nvidia-") or name == "triton" for name in full)


def test_this_venv_runs_the_full_lock():
    wrong = {}
    for name, version in pins("full.txt").items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (str(version), installed and str(installed))
    assert not wrong, f"(locked, installed) differ: {wrong}; rebuild with `make .venv/.installed`"
