"""The OpenAPI 3.1 document of ``/api``, built from the same table as the routes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import soniq

if TYPE_CHECKING:
    from soniq.dashboard.api import Endpoint

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"detail": {"type": "string"}}}}}}  # fmt: skip
_WRITE_ERRORS = {
    "401": _ERROR, "403": _ERROR, "404": _ERROR, "409": _ERROR, "422": _ERROR,
}  # fmt: skip


def document(endpoints: Iterable[Endpoint], root_path: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        path = "/api" + re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", e.path)
        paths.setdefault(path, {})[e.method.lower()] = _operation(e, path)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Soniq dashboard API", "version": soniq.__version__,
            "description": "Reads are open to loopback callers, or need the key when "
            "SONIQ_DASHBOARD_API_KEY is set; writes need the key or a direct loopback caller.",
        },
        "servers": [{"url": root_path or "/"}],
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }},
        "security": [{}, {"bearer": []}, {"apiKey": []}],
        "paths": paths,
    }  # fmt: skip


def _operation(e: Endpoint, path: str) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)\}", path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": {"type": kind},
         "description": text}
        for name, kind, text in e.query
    ]  # fmt: skip
    operation: dict[str, Any] = {
        "summary": e.summary,
        "operationId": f"{e.method.lower()}_{re.sub(r'[^a-z]+', '_', path.lower()).strip('_')}",
        "parameters": parameters,
        "responses": {"200": {"description": "OK", "content": {"application/json": {}}},
                      **(_WRITE_ERRORS if e.write else {"404": _ERROR, "422": _ERROR})},
    }  # fmt: skip
    if e.body:
        operation["requestBody"] = {
            "required": True, "description": e.body,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }  # fmt: skip
    return operation
