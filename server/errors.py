"""HTTP errors that carry their status, and the one place that turns exceptions into responses.

Every error a client sees is a JSON body `{"error": "<message>", "status": <code>}`: ours,
Falcon's own (404, 405, bad headers) and unexpected failures, which answer 500 with a
generic message while the traceback goes to the server log only.
"""

from __future__ import annotations

import json
import logging

import falcon

from engine.errors import ImageDecodeError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error meant for the client: an HTTP status, a message, optional headers."""

    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    status = 400


class NotAcceptable(ApiError):
    status = 406


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class ServiceUnavailable(ApiError):
    status = 503

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, {"Retry-After": str(int(retry_after_s))})


class GatewayTimeout(ApiError):
    status = 504


def _describe(req: falcon.Request, ex: Exception) -> tuple[int, str, dict[str, str]]:
    if isinstance(ex, ApiError):
        return ex.status, ex.message, ex.headers
    if isinstance(ex, falcon.HTTPError):  # raised by Falcon itself: routing, bad headers
        headers = dict(ex.headers or {})
        if isinstance(ex, falcon.HTTPMethodNotAllowed):
            message = f"method {req.method} is not allowed on {req.path}; allowed: {headers.get('Allow')}"
        elif isinstance(ex, falcon.HTTPNotFound) and not ex.description:
            message = f"no such path {req.path}; try POST /invocations or GET /ping"
        else:
            message = ex.description or ex.title or "error"
        return ex.status_code, message, headers
    if isinstance(ex, ImageDecodeError):
        return 400, str(ex), {}
    return 500, "internal server error", {}


def handle_error(req: falcon.Request, resp: falcon.Response, ex: Exception, params) -> None:
    """Falcon error handler for every exception: a JSON body, never a traceback."""
    status, message, headers = _describe(req, ex)
    if status >= 500 and not isinstance(ex, ApiError):
        logger.error("unhandled error in %s %s", req.method, req.path, exc_info=ex)
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps({"error": message, "status": status}).encode()
    for name, value in headers.items():
        resp.set_header(name, value)
    req.context.error = message


def install(app: falcon.App) -> None:
    # Falcon picks the handler registered for the closest class in the exception's MRO,
    # so HTTPError must be registered too or Falcon's own serializer would answer for it.
    app.add_error_handler((Exception, falcon.HTTPError), handle_error)
