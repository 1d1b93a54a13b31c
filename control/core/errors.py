"""Every error leaves the API as JSON: ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

import json
from typing import Any

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None, details: list[dict[str, Any]] | None = None) -> None:
        """``details`` lists what was wrong item by item (a batch's index, field and message)."""
        super().__init__(message)
        self.details = details
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.headers = headers or {}


def error_body(status: int, message: str, code: str | None = None) -> str:
    return json.dumps({"error": {"code": code or CODES.get(status, "error"), "message": message}})


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def unauthorized(message: str = "missing or invalid credentials") -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="zonefarm"'})


def forbidden(message: str = "not allowed") -> ApiError:
    return ApiError(403, message)


def not_found(what: str, ident: object) -> ApiError:
    return ApiError(404, f"{what} {ident} not found")


def conflict(message: str) -> ApiError:
    return ApiError(409, message)


def invalid(message: str) -> ApiError:
    return ApiError(422, message)


def too_many(message: str, retry_after: int) -> ApiError:
    """429 with Retry-After in whole seconds (at least 1): clients that honour it back off."""
    return ApiError(429, message, headers={"Retry-After": str(max(1, int(retry_after)))})
