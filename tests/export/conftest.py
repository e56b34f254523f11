"""One tiny ASE export (16/3/1/4, dense + sparse) shared by every export test file."""

from pathlib import Path

import pytest

from tests.export.tiny_export import export_tiny_model_dir


@pytest.fixture(scope="session")
def ase_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_model_dir(tmp_path_factory.mktemp("export") / "ase", "ase")
