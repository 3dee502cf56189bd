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
    """An error meant for the client: an HTTP status, a message, optional headers, and the
    reason it is counted under in maskrcnn_refusals_total (server.metrics.REFUSAL_REASONS)."""

    status = 500
    reason: str | None = None

    def __init__(self, message: str, headers: dict[str, str] | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if reason is not None:
            self.reason = reason


class BadRequest(ApiError):
    status = 400
    reason = "bad_request"


class NotFound(ApiError):
    status = 404
    reason = "unknown_model"


class NotAcceptable(ApiError):
    status = 406
    reason = "not_acceptable"


class Conflict(ApiError):
    status = 409
    reason = "model_exists"


class PayloadTooLarge(ApiError):
    status = 413
    reason = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    reason = "unsupported_media_type"


class ServiceUnavailable(ApiError):
    """503 + Retry-After; `reason`: queue_full, memory_budget, shutting_down or model_loading
    (None: not counted as a refusal, as /ping's answer while the model loads)."""

    status = 503

    def __init__(self, message: str, retry_after_s: int, reason: str | None):
        super().__init__(message, {"Retry-After": str(int(retry_after_s))}, reason)


class GatewayTimeout(ApiError):
    status = 504
    reason = "queue_timeout"


class InsufficientStorage(ApiError):
    """507: what SageMaker's multi-model contract answers when a model does not fit in memory."""

    status = 507
    reason = "insufficient_memory"


def _describe(req: falcon.Request, ex: Exception) -> tuple[int, str, dict[str, str], str | None]:
    """Status, message, headers and refusal reason (None: not a refusal) of an exception."""
    if isinstance(ex, ApiError):
        return ex.status, ex.message, ex.headers, ex.reason
    if isinstance(ex, falcon.HTTPError):  # raised by Falcon itself: routing, bad headers
        headers = dict(ex.headers or {})
        if isinstance(ex, falcon.HTTPMethodNotAllowed):
            message = f"method {req.method} is not allowed on {req.path}; allowed: {headers.get('Allow')}"
        elif isinstance(ex, falcon.HTTPNotFound) and not ex.description:
            message = f"no such path {req.path}; try POST /invocations or GET /ping"
        else:
            message = ex.description or ex.title or "error"
        # a malformed header Falcon could not read is the client's bad request; a path or
        # method the API lacks is not a refusal of a request the API knows
        reason = "bad_request" if ex.status_code == 400 else None
        return ex.status_code, message, headers, reason
    if isinstance(ex, ImageDecodeError):
        return 400, str(ex), {}, "undecodable_image"
    return 500, "internal server error", {}, None


def handle_error(req: falcon.Request, resp: falcon.Response, ex: Exception, params) -> None:
    """Falcon error handler for every exception: a JSON body, never a traceback."""
    status, message, headers, reason = _describe(req, ex)
    if status >= 500 and not isinstance(ex, ApiError):
        logger.error("unhandled error in %s %s", req.method, req.path, exc_info=ex)
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps({"error": message, "status": status}).encode()
    for name, value in headers.items():
        resp.set_header(name, value)
    req.context.error = message
    req.context.refusal = reason


def install(app: falcon.App) -> None:
    # Falcon picks the handler registered for the closest class in the exception's MRO,
    # so HTTPError must be registered too or Falcon's own serializer would answer for it.
    app.add_error_handler((Exception, falcon.HTTPError), handle_error)
