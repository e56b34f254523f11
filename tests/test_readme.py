"""The README is the user's door: its commands exist, and what it shows is what the demo
server really answers (the same curl, the same JSON fields, the same metric lines)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from model.presets import PRESETS
from tests.server.conftest import ServerProcess, parse_metrics, start_demo_server

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_make_targets_and_presets_exist():
    makefile = (REPO / "Makefile").read_text()
    for target in set(re.findall(r"\bmake ([\w-]+)", README)):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"make {target} is not a target"
    for name in re.findall(r"--preset ([\w-]+)", README):
        assert name in PRESETS, f"README names an unknown preset {name!r}"
    for path in re.findall(r"\]\(((?:docs|demo)/[\w./-]+)\)", README):
        assert (REPO / path).exists(), f"README links a missing file {path}"


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    server = start_demo_server(tmp_path_factory.mktemp("readme"), grpc=True)
    yield server
    server.stop()


def run_readme_curl(server: ServerProcess, command: str) -> str:
    command = command.replace("\\\n", " ").replace("http://127.0.0.1:8000", server.url)
    result = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def test_predict_example_is_what_the_server_answers(demo_server):
    curl = next(block for block in code_blocks("sh") if "/predict" in block)
    answer = json.loads(run_readme_curl(demo_server, curl))
    shown = json.loads(
        re.sub(
            r'"[^"]*\.\.\."|, \.\.\.',
            lambda m: '""' if m[0][0] == '"' else "",
            code_blocks("json")[0],
        )
    )
    assert answer["model"] == shown["model"]
    assert answer["provider"] == shown["provider"] and answer["image"] == shown["image"]
    assert answer["tasks"].keys() == shown["tasks"].keys()
    for task, entry in shown["tasks"].items():
        for field in ("kind", "shape", "encoding", "classes"):
            assert answer["tasks"][task].get(field) == entry.get(field), (task, field)
        assert answer["tasks"][task]["data"].startswith(entry["data"] or "iVBOR")
    assert answer["timings_ms"].keys() == shown["timings_ms"].keys()

    metrics = parse_metrics(
        subprocess.run(
            ["curl", "-s", f"{demo_server.url}/metrics"], capture_output=True, text=True, check=True
        ).stdout
    )
    lines = re.findall(r"^(ase_expert_tokens_total)\{(.*)\} ([\d.]+)$", README, flags=re.M)
    assert lines, "the README shows no metric lines"
    for name, labels, value in lines:
        label_items = frozenset(re.findall(r'(\w+)="([^"]*)"', labels))
        assert metrics[(name, label_items)] == float(value), labels


def test_error_example_is_the_servers_words(demo_server):
    with demo_server.client() as client:
        response = client.post(
            "/predict",
            params={"tasks": "depth"},
            content=(REPO / "demo/samples/scene_0.png").read_bytes(),
            headers={"Content-Type": "image/png"},
        )
    message = response.json()["error"]["message"]
    assert response.status_code == 422
    assert " ".join(message.split()) in " ".join(README.split())


def make_serve_command(*variables: str) -> str:
    """The server command line ``make serve`` would run (a dry run: the venv build it may need
    first, and a parent make's directory lines, are other lines)."""
    dry = subprocess.run(
        ["make", "--dry-run", "--no-print-directory", "serve", *variables],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(line for line in dry.splitlines() if " -m server " in line)


def test_make_serve_turns_grpc_on_with_grpc_port():
    assert make_serve_command("GRPC_PORT=8001").endswith("--grpc-port 8001")
    assert "grpc" not in make_serve_command()


def test_tritonclient_example_prints_what_the_readme_shows(demo_server):
    """The V2 example, pasted as it is (ports moved to the test's demo server), prints exactly
    the text block after it."""
    example = next(block for block in code_blocks("python") if "tritonclient" in block)
    shown = README.split(example, 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    code = example.replace("127.0.0.1:8000", demo_server.url[7:]).replace(
        "127.0.0.1:8001", demo_server.grpc
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == shown
