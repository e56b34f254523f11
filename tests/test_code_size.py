"""The project's size rules: no file over 400 lines and no function over 40 statements, so
that a file holds one job and a function reads at once.

A function is measured by what it does, not by how its lines wrap: the count is its
statements (the AST's ``ast.stmt`` nodes below the ``def``, its docstring left out), so the
formatter's one-argument-per-line layout costs nothing. A nested function counts inside its
parent and on its own. A file is measured in lines: its length is what a reader scrolls."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 400
MAX_FUNCTION_STATEMENTS = 40
CHECKED = ("model", "export", "server", "bench")


def statements(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Statements below ``function``'s ``def``, its docstring not counted."""
    count = sum(isinstance(node, ast.stmt) for node in ast.walk(function)) - 1
    return count - (ast.get_docstring(function, clean=False) is not None)


def oversized(path: Path, root: Path = REPO) -> list[str]:
    """What in ``path`` breaks a limit, as ``file[:line] name: N lines|statements``."""
    text = path.read_text()
    name = path.relative_to(root)
    found = []
    if (lines := len(text.splitlines())) > MAX_FILE_LINES:
        found.append(f"{name}: {lines} lines")
    for node in ast.walk(ast.parse(text)):
        is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        if is_function and (count := statements(node)) > MAX_FUNCTION_STATEMENTS:
            found.append(f"{name}:{node.lineno} {node.name}: {count} statements")
    return found


@pytest.mark.parametrize("folder", CHECKED)
def test_no_file_or_function_over_the_limits(folder):
    files = sorted((REPO / folder).rglob("*.py"))
    assert files
    assert [problem for path in files for problem in oversized(path)] == []


def test_the_count_sees_a_long_function_and_a_long_file(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_STATEMENTS + 1))
    path = tmp_path / "long.py"
    path.write_text(f'@decorator\ndef long():\n    """Doc."""\n{body}\n' + "\n" * MAX_FILE_LINES)
    assert oversized(path, tmp_path) == [
        f"long.py: {MAX_FUNCTION_STATEMENTS + 4 + MAX_FILE_LINES} lines",
        f"long.py:2 long: {MAX_FUNCTION_STATEMENTS + 1} statements",
    ]


def test_wrapped_lines_do_not_count_but_nested_statements_do(tmp_path):
    call = "print(\n" + "".join(f"        {i},\n" for i in range(80)) + "    )"
    nested = "\n".join(f"        y{i} = {i}" for i in range(MAX_FUNCTION_STATEMENTS))
    path = tmp_path / "shapes.py"
    text = f"def wrapped():\n    {call}\n\n\ndef nested():\n    if True:\n{nested}\n"
    path.write_text(text)
    nested_line = text.splitlines().index("def nested():") + 1
    assert oversized(path, tmp_path) == [
        f"shapes.py:{nested_line} nested: {MAX_FUNCTION_STATEMENTS + 1} statements"
    ]
