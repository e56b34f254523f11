"""The serving image's Dockerfile: pinned bases for both variants, a whitelisted build context
that still holds everything the build copies, a non-root user and a health check, and its
install steps replayed here in a fresh venv (Docker itself cannot run on this machine).

The replay runs the builder stage's RUN lines verbatim except for two things that need the
network: the dependencies come from this checkout's dev venv (put on PYTHONPATH, standing in for
the package registry, with the project itself hidden) and the wheel is built without build
isolation. CI can go further with a real online ``docker build``.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.monitoring.tooling import REPO

PINNED_IMAGE = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$")
HIDDEN_FROM_REPLAY = ("ase_serve", "__editable__", "_ase_serve")  # the project's dev install
DOCKERFILE, CUDA_DOCKERFILE = REPO / "Dockerfile", REPO / "Dockerfile.cuda"
SHARED_STAGES = "# ---- builder"  # where the two files' common text begins


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str, str]]:
    """(stage, instruction, arguments) of every Dockerfile line, continuations joined."""
    text = path.read_text().replace("\\\n", " ")
    stage, result = "", []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword == "FROM":
            stage = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
        result.append((stage, keyword, rest.strip()))
    return result


def global_args(path: Path = DOCKERFILE) -> dict[str, str]:
    args = {}
    for stage, keyword, rest in instructions(path):
        if keyword == "ARG" and not stage and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    return args


def stage_lines(stage: str, keyword: str) -> list[str]:
    return [rest for s, k, rest in instructions() if s == stage and k == keyword]


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    included = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            included = negated
    return included


def test_base_images_are_pinned_and_cuda_has_cudnn():
    args, cuda_args = global_args(), global_args(CUDA_DOCKERFILE)
    assert args["VARIANT"] == "cpu" and cuda_args["VARIANT"] == "cuda"
    for name, value in (
        ("PYTHON_IMAGE", args["PYTHON_IMAGE"]),
        ("CUDA_IMAGE", cuda_args["CUDA_IMAGE"]),
    ):
        assert PINNED_IMAGE.match(value), f"{name}={value} is not pinned"
    assert re.search(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime", cuda_args["CUDA_IMAGE"])
    for path in (DOCKERFILE, CUDA_DOCKERFILE):
        froms = [rest for _, keyword, rest in instructions(path) if keyword == "FROM"]
        assert "base-${VARIANT} AS builder" in froms and "base-${VARIANT} AS runtime" in froms
    assert "${CUDA_IMAGE} AS base-cuda" in [
        rest for _, keyword, rest in instructions(CUDA_DOCKERFILE) if keyword == "FROM"
    ]


def test_the_cpu_build_needs_nothing_but_the_python_image():
    """The classic builder (DOCKER_BUILDKIT=0, Compose v1) builds every stage of the file, and
    BuildKit fetches a `# syntax=` frontend from a registry first: the CPU file names no other
    image than its Python base (its other FROMs are its own earlier stages), and neither file
    has a syntax line."""
    stages = []
    for stage, keyword, rest in instructions():
        if keyword == "FROM":
            base = rest.split(" AS ")[0].replace("${VARIANT}", "cpu")
            assert base == "${PYTHON_IMAGE}" or base in stages, f"FROM {rest}"
            stages.append(stage)
    for path in (DOCKERFILE, CUDA_DOCKERFILE):
        directives = path.read_text().split("\n\n", 1)[0]  # parser directives come first
        assert not re.search(r"^#\s*syntax\s*=", directives, flags=re.M | re.I), path.name


def test_the_cuda_file_shares_every_stage_after_its_base():
    """Dockerfile.cuda is the Dockerfile on another base: the same builder and runtime."""
    shared = DOCKERFILE.read_text().split(SHARED_STAGES, 1)[1]
    assert CUDA_DOCKERFILE.read_text().split(SHARED_STAGES, 1)[1] == shared


def test_runtime_is_non_root_healthy_and_serves_from_env():
    user = stage_lines("runtime", "USER")
    assert user and user[-1] not in ("root", "0")
    healthcheck = stage_lines("runtime", "HEALTHCHECK")[0]
    assert "/readyz" in healthcheck and "--start-period" in healthcheck
    command = json.loads(stage_lines("runtime", "CMD")[-1])
    assert command[:3] == ["python", "-m", "server"] and "0.0.0.0" in command
    assert "--model-dir" not in command  # ASE_MODEL_DIR decides, so compose can mount another
    env = " ".join(stage_lines("runtime", "ENV"))
    assert "ASE_MODEL_DIR=/opt/ase/models/photo" in env  # the photo model, as make serve's
    assert "COPY demo/photo/model /opt/ase/models/photo" in [
        f"COPY {c}" for c in stage_lines("runtime", "COPY")
    ]


def test_build_context_holds_every_copy_source():
    sources = [
        source
        for stage in ("builder", "runtime")
        for arguments in stage_lines(stage, "COPY")
        if not arguments.startswith("--from")
        for source in shlex.split(arguments)[:-1]
    ]
    expected = {"pyproject.toml", "README.md", "requirements/serve.txt", "model", "export"}
    assert expected | {"server", "demo/photo/model"} <= set(sources)
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        kept = [f for f in files if dockerignore_allows(str(f.relative_to(REPO)))]
        assert kept, f"COPY {source}: .dockerignore leaves nothing of it"
    for heavy in (".venv/bin/python", ".git/HEAD", "runs/x/ckpt.pt", "model/__pycache__/a.pyc"):
        assert not dockerignore_allows(heavy), f"{heavy} would be sent to the Docker daemon"


def build_context(destination: Path) -> Path:
    """What ``docker build`` would send: the repository filtered by .dockerignore."""
    for path in REPO.rglob("*"):
        relative = str(path.relative_to(REPO))
        if relative.startswith((".venv", ".git/")) or not path.is_file():
            continue
        if dockerignore_allows(relative):
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return destination


def registry_stand_in(destination: Path) -> Path:
    """The dev venv's packages without the project's own (editable) install."""
    destination.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(HIDDEN_FROM_REPLAY):
            (destination / entry.name).symlink_to(entry)
    return destination


def replay_builder(tmp_path: Path) -> tuple[Path, Path]:
    """Run the builder stage's RUN lines in a fresh venv; returns (venv, registry stand-in)."""
    context = build_context(tmp_path / "context")
    registry = registry_stand_in(tmp_path / "registry")
    venv = tmp_path / "venv"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(registry),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": "",
        "PIP_NO_BUILD_ISOLATION": "0",  # pip reads "0" here as "do not isolate the build"
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
        "HOME": str(tmp_path),
    }
    runs = stage_lines("builder", "RUN")
    installs = [run for run in runs if "pip install" in run]
    assert installs == [  # the serving lock, the ray variant's lock, the project without deps
        "${VENV}/bin/pip install -r requirements/serve.txt",
        'if [ "${VARIANT}" = ray ]; then ${VENV}/bin/pip install -r requirements/ray.txt; fi',
        "${VENV}/bin/pip install --no-deps .",
    ]
    for run in runs:
        command = run.replace("${VENV}", str(venv)).replace(
            "python3 -m venv", f"{sys.executable} -m venv"
        )
        for name, default in global_args().items():  # the build's ARG defaults, as docker would
            command = command.replace(f"${{{name}}}", default)
        if "find_spec('torch')" in command:
            continue  # the registry stand-in holds torch; checked on the metadata below
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (
            f"RUN {run}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return venv, registry


def requirement_closure(requirements: list[str]) -> set[str]:
    """Names of every distribution the requirements pull in, through installed metadata."""
    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = requirement.name.lower().replace("_", "-")
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo.extend(Requirement(r) for r in metadata.distribution(name).requires or [])
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is needed by the serving install but not in the dev venv")
    return seen


@pytest.mark.timeout(180)
def test_builder_install_steps_replayed_in_a_fresh_venv(tmp_path):
    venv, registry = replay_builder(tmp_path)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    installed = metadata.Distribution.at(next(site.glob("ase_serve-*.dist-info")))
    serve = [r for r in installed.requires if 'extra == "serve"' in r]
    assert serve and not any(Requirement(r).name == "torch" for r in serve)
    closure = requirement_closure(
        [r.split(";")[0] for r in serve]
        + list(r for r in installed.requires if "extra ==" not in r)
    )
    assert "onnxruntime-gpu" in closure and "torch" not in closure
    # The installed (not editable) package starts, with torch made unimportable.
    probe = (
        "import sys, runpy; sys.modules['torch'] = None; import server.app, server;"
        "assert server.__file__.startswith(sys.prefix), server.__file__;"
        "sys.argv = ['server', '--help']; runpy.run_module('server', run_name='__main__')"
    )
    result = subprocess.run(
        [str(python), "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(registry)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--model-dir" in result.stdout
    runtime_leaves_the_install_untouched(venv, registry, tmp_path)


def runtime_env(tmp_path: Path) -> dict[str, str]:
    """The runtime stage's ENV, with /tmp (writable in every way the image runs) moved here."""
    env = {}
    for arguments in stage_lines("runtime", "ENV"):
        env.update(pair.split("=", 1) for pair in shlex.split(arguments))
    del env["PATH"]
    return {name: value.replace("/tmp/", f"{tmp_path}/tmp/") for name, value in env.items()}


def runtime_leaves_the_install_untouched(venv: Path, registry: Path, tmp_path: Path) -> None:
    """The image's user owns no file of the install, and Kubernetes mounts it read-only: with
    the image's environment, loading the server and compiling its map kernels (as the image
    build and every start do) writes nothing into the venv, and numba's cache is filled where
    NUMBA_CACHE_DIR says. (This replay runs as root, which could write anywhere: it compares
    the venv's files instead; `make compose-test` runs the real image as its user.)"""
    env = runtime_env(tmp_path) | {"PYTHONPATH": str(registry)}
    before = sorted(venv.rglob("*"))
    probe = "from server import maps; maps.compile_kernels()"
    command = [str(venv / "bin" / "python"), "-c", probe]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(venv.rglob("*")) == before, "the server wrote into its install"
    assert list(Path(env["NUMBA_CACHE_DIR"]).rglob("*.nbi")), "numba cached nothing"
