"""The server against its own OpenAPI document: schemathesis generates requests from the schema
(valid ones, then invalid ones) and checks every answer with its default checks (no 5xx;
status codes, content types, headers and bodies as documented; schema-valid requests accepted,
invalid ones rejected). A real server on 127.0.0.1 on the tiny model; bounded in examples per
operation and derandomised, so that CI runs the same cases every time.

schemathesis' own pytest loader (``from_fixture``) fails on pytest 9 (it sets a private node
attribute that pytest no longer has), so each operation's strategy is driven here with
hypothesis directly, and every failure of every operation is collected before the assertion,
keyed by operation, answer (status and error code) and the checks that failed.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup

from tests.server.conftest import start_server

EXAMPLES_PER_OPERATION = 30
ACCEPTANCE = "Schema-valid request rejected"
# Found and left to /predict's owner (issue 13): /predict's OpenAPI allows requests
# that the server rightly refuses, because OpenAPI cannot say what it checks: constraints across
# query parameters, task names known only once the model is loaded, and whether the body is an
# image. Each needs a decision (the schema, the behaviour, or the test's expected statuses);
# listed so that any other failure fails the test now.
KNOWN_FAILURES = {
    f"POST /predict -> 422 invalid_parameter: {ACCEPTANCE}": "format=png with several tasks "
    "(or none named: all five), visualize=true with format=npz, size=model with max_side, "
    "npz_normals without format=npz, tasks= (empty)",
    f"POST /predict -> 422 unknown_task: {ACCEPTANCE}": "tasks is any string in the schema",
    f"POST /predict -> 400 invalid_image: {ACCEPTANCE}": "a binary body that is not an image",
    f"POST /predict -> 400 empty_body: {ACCEPTANCE}": "an empty body is valid binary",
}
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def fuzzed_server(model_dir, logs):
    process = start_server(model_dir, logs, "--max-batch", "4", "--max-wait-ms", "5")
    yield process
    process.stop()


def fuzz(operation, mode: GenerationMode) -> dict[str, str]:
    """Every distinct failure of one operation: its key -> the first report of it."""
    failures: dict[str, str] = {}

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case) -> None:
        response = case.call(timeout=30)
        try:
            case.validate_response(response)
        except (Failure, FailureGroup) as error:
            titles = ", ".join(sorted(f.title for f in getattr(error, "exceptions", [error])))
            answer = f"{response.status_code} {error_code(response)}".strip()
            failures.setdefault(f"{operation.label} -> {answer}: {titles}", str(error))

    try:
        check()
    except Unsatisfiable:  # negative mode on an operation that takes no input: nothing to break
        assert mode is GenerationMode.NEGATIVE, operation.label
    return failures


def error_code(response) -> str:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""


def test_server_follows_its_openapi(fuzzed_server):
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6  # /predict, the probes, /v1/models, /metrics, /v1/samples
    failures: dict[str, str] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures.update(fuzz(operation, mode))
    print("found:", *sorted(failures), sep="\n  ")
    new = {key: report for key, report in failures.items() if key not in KNOWN_FAILURES}
    assert not new, "\n\n".join(f"{key}\n{report}" for key, report in new.items())
