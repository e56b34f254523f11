"""The model repository on disk: which models and versions there are, and which of them the
version policy serves (Triton's layout and ``version_policy``; nothing here loads a model).

Layout (``--model-repository DIR``)::

    DIR/<name>/<version>/   a model directory as export/to_onnx.py writes it (contract 3);
                            <version> a positive integer: the protocol's version
    DIR/<name>/             a bare model directory (metadata.json directly in it): version 1

Names and versions come from the folders, as in Triton; a folder whose name starts with a dot
is skipped (write a new version there, then rename it into place: a poll never sees it
half-written). ``--model-dir DIR`` is a repository of one: the model directory, named by its
metadata, as version 1. Folders may be symbolic links (demo/models/ase-demo -> ../model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from export.contract import METADATA_FILE
from server.modeldir import ModelDir, ModelDirError, load_model_dir

if TYPE_CHECKING:
    from server.settings import Settings

# A version folder's state as polling sees it: (file name, size, modification time) of each file.
Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are served: the ``latest`` N (highest numbers), ``all``, or
    ``specific`` ones (Triton's ``version_policy``). Text form: ``latest:1`` (the default),
    ``latest:2``, ``all``, ``specific:1,3``."""

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, argument = text.strip().partition(":")
        try:
            if kind == "all" and not argument:
                return cls("all")
            if kind == "latest":
                count = int(argument or 1)
                if count >= 1:
                    return cls("latest", count)
            if kind == "specific":
                versions = tuple(sorted({int(v) for v in argument.split(",")}))
                if versions and versions[0] >= 1:
                    return cls("specific", versions=versions)
        except ValueError:
            pass
        raise ValueError(
            f"version policy {text!r}: use latest:N (N >= 1), all, or specific:V[,V...] "
            "(positive version numbers)"
        )

    def select(self, versions: list[str]) -> list[str]:
        """The served ones among a model's ``versions`` (decimal strings), in increasing order."""
        numbers = sorted(int(v) for v in versions)
        if self.kind == "latest":
            numbers = numbers[-self.count :]
        elif self.kind == "specific":
            numbers = [n for n in numbers if n in self.versions]
        return [str(n) for n in numbers]

    def __str__(self) -> str:
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all" if self.kind == "all" else f"latest:{self.count}"


@dataclass(frozen=True)
class Repository:
    """Where models come from: a Triton-layout folder (``root``), or one model directory
    (``single``, served under ``single_name``)."""

    root: Path | None = None
    single: Path | None = None
    single_name: str = ""

    def scan(self) -> dict[str, dict[str, Path]]:
        """Every model on disk: name -> version -> its folder (nothing checked inside it yet)."""
        if self.single is not None:
            return {self.single_name: {"1": self.single}}
        if self.root is None or not self.root.is_dir():
            return {}
        found = {}
        for folder in sorted(self.root.iterdir(), key=lambda p: p.name):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            versions = model_versions(folder)
            if versions:
                found[folder.name] = versions
        return found

    def describe(self) -> str:
        return str(self.single if self.single is not None else self.root)


def model_versions(folder: Path) -> dict[str, Path]:
    """One model's folder: its numbered version folders, or itself as version 1 when it holds a
    model directory directly (and no numbered folder)."""
    versions = {}
    for child in folder.iterdir():
        if child.name.isdigit() and int(child.name) >= 1 and child.is_dir():
            versions[str(int(child.name))] = child
    if not versions and (folder / METADATA_FILE).is_file():
        versions["1"] = folder
    return versions


def fingerprint(folder: Path) -> Fingerprint:
    """What polling compares: a version whose files change (a new export written over it) is
    loaded again, and one that failed is retried once its files change (a copy completing)."""
    entries = []
    try:
        with os.scandir(folder) as found:
            for entry in found:
                if entry.is_file():
                    stat = entry.stat()
                    entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
    except OSError:
        return ()
    return tuple(sorted(entries))


def repository_for(settings: Settings) -> Repository:
    """The settings' repository: ``model_repository``, or ``model_dir`` as a repository of one
    (named by its metadata), or, with neither, the demo repository."""
    from server.settings import DEMO_REPOSITORY

    if settings.uses_demo_repository:
        return Repository(root=DEMO_REPOSITORY)
    if settings.model_dir is None:
        return Repository(root=settings.model_repository)
    try:
        name = load_model_dir(settings.model_dir, verify_hashes=False).name
    except ModelDirError:
        name = settings.model_dir.name  # it fails again, with its reason, when loaded
    return Repository(single=settings.model_dir, single_name=name)


def served_names(settings: Settings, found: dict[str, dict[str, Path]]) -> list[str]:
    """The models of ``found`` that the settings serve (``models``; default every one)."""
    wanted = settings.model_names
    return [name for name in found if wanted is None or name in wanted]


def default_name(settings: Settings, names: list[str]) -> str | None:
    """The model served without a name: ``default_model``; in the demo repository (no model
    flags), its photo model; else the first by name."""
    from server.settings import DEMO_DEFAULT_MODEL

    if settings.default_model:
        return settings.default_model
    # Resolved here, not as the setting's default: ``--models ase-demo`` on the demo
    # repository must still start (cli.py refuses a default model that is not served).
    if settings.uses_demo_repository and DEMO_DEFAULT_MODEL in names:
        return DEMO_DEFAULT_MODEL
    return min(names) if names else None


def pick_model(settings: Settings, name: str | None = None, version: str | None = None) -> ModelDir:
    """One model version of the settings' repository, checked: ``name`` (default: the default
    model), ``version`` (default: the newest one the version policy serves). For the commands
    that serve one model (predict-dataset, benchmarks); ``ModelDirError`` says what exists."""
    repository = repository_for(settings)
    found = repository.scan()
    names = served_names(settings, found)
    name = name or default_name(settings, names)
    if name not in found:
        raise ModelDirError(
            f"no model {name!r} in the repository {repository.describe()}; it holds "
            f"{', '.join(found) or 'none'}"
        )
    served = VersionPolicy.parse(settings.model_version_policy).select(list(found[name]))
    version = version or (served[-1] if served else None)
    if version not in found[name]:
        raise ModelDirError(
            f"model {name!r} has no version {version!r}; it has "
            f"{', '.join(sorted(found[name], key=int))}"
        )
    return load_model_dir(found[name][version], name=name, version=version)
