"""The collector's OpenAPI 3 description, served at /openapi.json (used by schemathesis).

Hand-written so it documents Segment's HTTP Tracking API as the collector implements it:
every answer a sender can get, including the 400/401/429/500 ones.
"""

from __future__ import annotations

from typing import Any

_CALLS = ("identify", "track", "page", "screen", "group", "alias")


def _message_schema(call: str | None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "userId": {"type": "string"},
        "anonymousId": {"type": "string"},
        "messageId": {"type": "string", "maxLength": 99},
        "timestamp": {"type": "string", "format": "date-time"},
        "sentAt": {"type": "string", "format": "date-time"},
        "context": {"type": "object"},
        "integrations": {"type": "object"},
        "writeKey": {"type": "string"},
    }
    if call in (None, "track"):
        properties["event"] = {"type": "string"}
        properties["properties"] = {"type": "object"}
    if call in (None, "page", "screen"):
        properties["name"] = {"type": "string"}
        properties["properties"] = {"type": "object"}
    if call in (None, "identify", "group"):
        properties["traits"] = {"type": "object"}
    if call in (None, "group"):
        properties["groupId"] = {"type": "string"}
    if call in (None, "alias"):
        properties["previousId"] = {"type": "string"}
    if call is None:
        properties["type"] = {"type": "string", "enum": list(_CALLS)}
    return {"type": "object", "properties": properties}


def _responses() -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "200": {
            "description": "Accepted and fsynced to the archive (dropped messages are counted in /stats).",
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {"success": {"type": "boolean"}}}
                }
            },
        },
        "400": {
            "description": "Bad Request: invalid JSON, over 32 KB a message or 500 KB a request, wrong content type, empty body.",
            "content": text,
        },
        "401": {"description": "Missing or unknown write key.", "content": text},
        "408": {"description": "The body did not arrive within the read timeout.", "content": text},
        "429": {
            "description": "Over --rate-limit requests per second; see Retry-After.",
            "content": text,
        },
        "500": {
            "description": "Injected by --fail-rate, or the archive could not be written.",
            "content": text,
        },
    }


def _post(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"writeKey": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": _responses(),
        }
    }


def openapi_spec() -> dict[str, Any]:
    batch = {
        "type": "object",
        "required": ["batch"],
        "properties": {
            "batch": {"type": "array", "items": _message_schema(None), "maxItems": 2500},
            "context": {"type": "object"},
            "sentAt": {"type": "string", "format": "date-time"},
            "writeKey": {"type": "string"},
        },
    }
    paths: dict[str, Any] = {
        "/v1/batch": _post("Send a batch of messages", batch),
        "/v1/import": _post("Old name of /v1/batch", batch),
        "/v1/b": _post("analytics.js's batch path (same as /v1/batch)", batch),
    }
    for call in _CALLS:
        paths[f"/v1/{call}"] = _post(f"Send one {call} call", _message_schema(call))
        paths[f"/v1/{call[0]}"] = _post(f"analytics.js's path for one {call} call", _message_schema(call))
    paths["/v1/m"] = {
        "post": {
            "summary": "analytics.js's own metrics: answered, counted in /stats, never archived",
            "requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}},
            "responses": {
                "200": {"description": "Counted", "content": {"application/json": {"schema": {"type": "object"}}}},
                "400": {"description": "Over 500 KB", "content": {"text/plain": {"schema": {"type": "string"}}}},
            },
        }
    }
    paths["/v1/projects/{writeKey}/settings"] = {
        "get": {
            "summary": "analytics.js's settings (cdnURL), with Segment.io's apiHost pointing here",
            "parameters": [{"name": "writeKey", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "Settings", "content": {"application/json": {"schema": {"type": "object"}}}},
                "404": {"description": "No source has this write key",
                        "content": {"text/plain": {"schema": {"type": "string"}}}},
            },
        }
    }
    paths["/health"] = {
        "get": {
            "summary": "Liveness",
            "responses": {
                "200": {
                    "description": "Up",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    paths["/stats"] = {
        "get": {
            "summary": "Counters since start",
            "responses": {
                "200": {
                    "description": "Counters",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "segloop collector (Segment HTTP Tracking API)", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"writeKey": {"type": "http", "scheme": "basic"}},
        },
    }
