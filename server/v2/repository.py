"""Triton's model repository extension (``model_repository``), the parts both front doors share:
the requests' parameters checked, and the index's rows (server/model_control.py computes them).

REST: ``POST /v2/repository/index`` (body empty or ``{"ready": bool}``) answers a JSON list of
``{"name", "version", "state", "reason"}``; ``POST /v2/repository/models/{name}/load`` (body empty
or ``{"parameters": {}}``) and ``.../unload`` (``{"parameters": {"unload_dependents": bool}}``)
answer 200 with an empty body once done. gRPC: ``RepositoryIndex``, ``RepositoryModelLoad``,
``RepositoryModelUnload`` with the same meaning. A load's ``config`` and ``file:`` parameters
(a model sent in the request) are not supported: models come from the repository's folder.
"""

from __future__ import annotations

from typing import Any

import orjson

from server.v2.errors import bad_request

UNLOAD_PARAMETERS = ("unload_dependents",)  # accepted; no model here has dependents


def index_request(body: bytes) -> bool:
    """The ``ready`` flag of an index request (tritonclient sends an empty body: False)."""
    document = _document(body, "index")
    unknown = sorted(set(document) - {"ready"})
    if unknown:
        raise bad_request(f"unknown field(s) {unknown} in the index request; it takes 'ready'")
    ready = document.get("ready", False)
    if not isinstance(ready, bool):
        raise bad_request(f"'ready' must be true or false, got {ready!r}")
    return ready


def load_request(body: bytes) -> None:
    """A load request: no parameters (the model is read from the repository)."""
    check_load_parameters(_parameters(body, "load"))


def unload_request(body: bytes) -> None:
    parameters = _parameters(body, "unload")
    unknown = sorted(set(parameters) - set(UNLOAD_PARAMETERS))
    if unknown:
        raise bad_request(f"unknown unload parameter(s) {unknown}; it takes unload_dependents")
    if not isinstance(parameters.get("unload_dependents", False), bool):
        raise bad_request("unload_dependents must be true or false")


def check_load_parameters(parameters: dict[str, Any]) -> None:
    if parameters:
        raise bad_request(
            f"load parameter(s) {sorted(parameters)} are not supported: this server loads "
            "models from its repository's folder (write the model there, then load it)"
        )


def check_repository_name(name: str) -> None:
    """gRPC's ``repository_name``: this server has one repository, named by leaving it empty."""
    if name:
        raise bad_request(f"unknown repository {name!r}: this server has one; leave it empty")


def _document(body: bytes, what: str) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise bad_request(f"the {what} request is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise bad_request(f"the {what} request must be a JSON object")
    return document


def _parameters(body: bytes, what: str) -> dict[str, Any]:
    document = _document(body, what)
    unknown = sorted(set(document) - {"parameters"})
    if unknown:
        raise bad_request(f"unknown field(s) {unknown} in the {what} request; it takes parameters")
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise bad_request(f"'parameters' of the {what} request must be an object")
    return parameters
