"""The console commands (pyproject.toml's ``[project.scripts]``) are installed as declared, each
answers ``--help``, and the README names them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_installed_commands_are_the_declared_ones():
    installed = {
        entry.name: entry.value
        for entry in metadata.distribution("ase-serve").entry_points
        if entry.group == "console_scripts"
    }
    assert installed == SCRIPTS, "pyproject.toml changed since the install: make .venv/.installed"
    assert {"ase-serve", "ase-export", "ase-train", "ase-evaluate"} <= SCRIPTS.keys()


def test_every_command_answers_help():
    bin_dir = Path(sys.executable).parent
    missing = [name for name in SCRIPTS if not (bin_dir / name).is_file()]
    assert not missing, f"not installed in {bin_dir}: {missing} (make .venv/.installed)"
    # Started together: each spends its seconds importing torch or the server's stack.
    running = {
        name: subprocess.Popen(
            [str(bin_dir / name), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name in SCRIPTS
    }
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, f"{name} --help: {err.decode()[-2000:]}"
        assert out.decode().startswith("usage: "), (name, out.decode()[:200])


def test_the_readme_names_every_command():
    readme = (REPO / "README.md").read_text()
    for name in SCRIPTS:
        assert f"`{name}`" in readme, f"the README does not name {name}"
