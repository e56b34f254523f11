"""The project's size rules: no file over 400 lines and no function over 60, so that a file
holds one job and a function reads at once. A function counts from its first decorator to its
last line, docstring included; a nested function counts inside its parent and on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# server/ and bench/ follow the same rules; they join this list once they meet them.
CHECKED = ("model", "export")


def oversized(path: Path, root: Path = REPO) -> list[str]:
    """What in ``path`` breaks a limit, as ``file[:line] name: N lines`` (file from ``root``)."""
    text = path.read_text()
    name = path.relative_to(root)
    found = []
    if (lines := len(text.splitlines())) > MAX_FILE_LINES:
        found.append(f"{name}: {lines} lines")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if (length := node.end_lineno - start + 1) > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


@pytest.mark.parametrize("folder", CHECKED)
def test_no_file_or_function_over_the_limits(folder):
    files = sorted((REPO / folder).rglob("*.py"))
    assert files
    assert [problem for path in files for problem in oversized(path)] == []


def test_the_count_sees_a_long_function_and_a_long_file(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f"@decorator\ndef long():\n{body}\n" + "\n" * MAX_FILE_LINES)
    assert oversized(path, tmp_path) == [
        f"long.py: {MAX_FUNCTION_LINES + 2 + MAX_FILE_LINES} lines",
        f"long.py:2 long: {MAX_FUNCTION_LINES + 2} lines",
    ]
