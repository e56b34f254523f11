"""The server against its own OpenAPI document: schemathesis generates requests from the schema
(valid ones, then invalid ones) and checks every answer with its default checks (no 5xx;
status codes, content types, headers and bodies as documented; schema-valid requests accepted,
invalid ones rejected). A real server on 127.0.0.1 on the tiny model; bounded in examples per
operation and derandomised, so that CI runs the same cases every time.

schemathesis' own pytest loader (``from_fixture``) fails on pytest 9 (it sets a private node
attribute that pytest no longer has), so each operation's strategy is driven here with
hypothesis directly, and every failure of every operation is collected before the assertion,
keyed by operation, answer (status and error code, or the V2 error's message) and the checks
that failed. The schema says what OpenAPI can (the served model's task names as a pattern, V2
inputs, outputs and parameter ranges: server/routes/native.py and server/v2/openapi.py
``describe_model``); ALLOWED names what it cannot, and nothing else may fail.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup

from tests.server.conftest import start_server

EXAMPLES_PER_OPERATION = 30
ACCEPTANCE = "Schema-valid request rejected"
# What OpenAPI cannot express, so that a schema-valid request may still be refused: these
# answers, and no others, may fail the acceptance check (and only that check). Each entry:
# (operation, status, the native error code or a fragment of the V2 error message, why).
V2_INFER = (
    "POST /v2/models/{model_name}/infer",
    "POST /v2/models/{model_name}/versions/{model_version}/infer",
)
ALLOWED = [
    ("POST /predict", 400, "invalid_image", "a body that is not an image: the schema says binary"),
    ("POST /predict", 400, "empty_body", "an empty body is valid binary"),
    ("POST /predict", 422, "duplicate_task", "repeated task names: a pattern cannot forbid them"),
    *(
        (op, 400, fragment, why)
        for op in V2_INFER
        for fragment, why in (
            (
                "is not valid JSON",
                "an octet-stream body must start with the JSON header: the binary "
                "extension's layout is beyond OpenAPI",
            ),
            (
                "must be a JSON object",
                "the same: an octet-stream body whose header is not an object",
            ),
            ("values given for shape", "V2 tensor content: data's length vs the shape's product"),
            ("describes too many elements", "a shape whose product is past 2**48 elements"),
            ("the file in base64", "an image input that is not base64"),
            ("is not an image", "an image input that is not an image"),
            ("more than once", "repeated output names: uniqueItems compares whole objects"),
        )
    ),
]
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


def fuzz(operation, mode: GenerationMode, allowed: Counter) -> dict[str, str]:
    """Every distinct failure of one operation that ALLOWED does not name: its key -> the first
    report of it. Allowed ones are counted in ``allowed``, by entry."""
    failures: dict[str, str] = {}

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case) -> None:
        response = case.call(timeout=30)
        try:
            case.validate_response(response)
        except (Failure, FailureGroup) as error:
            titles = sorted(f.title for f in getattr(error, "exceptions", [error]))
            reason = why_allowed(operation.label, response, titles)
            if reason is not None:
                allowed[reason] += 1
                return
            answer = f"{response.status_code} {error_text(response)[:60]}".strip()
            failures.setdefault(f"{operation.label} -> {answer}: {', '.join(titles)}", str(error))

    try:
        check()
    except Unsatisfiable:  # negative mode on an operation that takes no input: nothing to break
        assert mode is GenerationMode.NEGATIVE, operation.label
    return failures


def why_allowed(label: str, response, titles: list[str]) -> str | None:
    if titles != [ACCEPTANCE]:
        return None
    text = error_text(response)
    for operation, status, fragment, why in ALLOWED:
        if (operation, status) == (label, response.status_code) and fragment in text:
            return f"{operation} -> {status} {fragment}: {why}"
    return None


def error_text(response) -> str:
    """The native error's code, or the V2 error's message."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return ""
    return error if isinstance(error, str) else str(error.get("code", ""))


def test_server_follows_its_openapi(fuzzed_server):
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6  # /predict, the probes, /v1/models, /metrics, /v1/samples
    failures: dict[str, str] = {}
    allowed: Counter = Counter()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures.update(fuzz(operation, mode, allowed))
    print("allowed:", *(f"{n} x {reason}" for reason, n in sorted(allowed.items())), sep="\n  ")
    assert not failures, "\n\n".join(f"{key}\n{report}" for key, report in failures.items())
