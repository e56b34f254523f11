"""Without a Docker engine the container tests skip, and fail in CI (``CI=true``): run by
`make test` (no engine needed), unlike the rest of tests/container."""

from __future__ import annotations

import pytest

from tests.container import engine


@pytest.fixture
def no_docker(monkeypatch):
    monkeypatch.setattr(engine, "DOCKER", None)


def test_no_engine_fails_in_ci(no_docker, monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install docker.io"):
        engine.start_engine(tmp_path)


def test_no_engine_skips_elsewhere(no_docker, monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Docker engine answers"):
        engine.start_engine(tmp_path)
