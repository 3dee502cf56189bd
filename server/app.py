"""The Falcon app: the SageMaker hosting contract over an injected engine.

    GET  /ping                                   200 once the engine is loaded and warm, else 503
    POST /invocations                            image in, segmented image or JSON out
    POST /endpoints/{endpoint_name}/invocations  the same (what boto3 / the AWS CLI call)
    GET  /execution-parameters                   Batch Transform settings
    GET  /                                       a web page to try the service (server/static/)
    GET  /static/{file}                          its script, style sheet, icon and sample scene
    GET  /openapi.json                           the OpenAPI 3.1 document of all of the above

Resources are thin: negotiation.py validates headers, responses.py does the work on the
inference executor, errors.py turns every exception into a JSON error.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import falcon

from engine.image_io import probe_image
from engine.model_defaults import demo_notice
from engine.render import prepare_thread

from . import errors
from .config import ServerConfig
from .errors import BadRequest, GatewayTimeout, PayloadTooLarge, ServiceUnavailable
from .inference import (InferenceExecutor, InferenceTimeoutError, MemoryBudget, MemoryBudgetError, QueueFullError,
                        ShuttingDownError)
from .negotiation import (CUSTOM_ATTRIBUTES_HEADER, choose_response_type, media_type,
                          parse_custom_attributes, request_image_type, selectable_classes)
from .openapi import OPENAPI_PATH, OpenApiDocuments
from .responses import run_invocation

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
BATCH_STRATEGY = "SingleRecord"  # one image per request (see ExecutionParametersResource)
MAX_TRANSFORM_PAYLOAD_MB = 100  # CreateTransformJob's upper bound for MaxPayloadInMB
# The page loads only its own script and style sheet and calls only this origin; images it
# shows are blob: URLs of the responses.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")


class EngineSlot:
    """Holds the engine once it is loaded and warmed up; empty until then.

    The server starts accepting connections before the model is loaded (SageMaker wants a
    socket quickly), so /ping and /invocations look here to know whether they can serve.
    `inference_bytes`: one inference's working memory, measured at warm-up (0 if unknown),
    which admission by memory counts once per further concurrent inference.
    """

    def __init__(self, engine=None, inference_bytes: int = 0):
        self._engine = engine
        self.inference_bytes = inference_bytes

    @property
    def engine(self):
        return self._engine

    @property
    def ready(self) -> bool:
        return self._engine is not None

    def set(self, engine, inference_bytes: int = 0) -> None:
        self.inference_bytes = inference_bytes
        self._engine = engine


def read_body(stream, content_length: int | None, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes by header and while reading."""
    if content_length is not None and content_length > limit:
        raise PayloadTooLarge(f"request body is {content_length} bytes; the limit is {limit}")
    data = stream.read(limit + 1)  # one byte more than allowed tells us it is too big
    if len(data) > limit:
        raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
    if not data:
        raise BadRequest("empty request body; send a JPEG or PNG image")
    return data


class PingResource:
    def __init__(self, slot: EngineSlot, config: ServerConfig):
        self._slot = slot
        self._config = config

    def on_get(self, req, resp):
        engine = self._slot.engine
        if engine is None:
            raise ServiceUnavailable("model is loading", self._config.retry_after_s)
        # classes: what the `classes` custom attribute accepts, so that a client (the web page)
        # can offer a class filter for whatever model is served; a short list, built here
        # from the engine's names without touching the inference queue.
        resp.media = {"status": "ok", "model": engine.model_name, "backend": engine.backend_name,
                      "precision": engine.precision, "demo": engine.demo,
                      "classes": selectable_classes(engine.class_names)}
        if engine.demo:  # what the page shows, and what a person reading /ping should know
            resp.media["notice"] = demo_notice(engine.class_names)


class InvocationsResource:
    def __init__(self, slot: EngineSlot, executor: InferenceExecutor, config: ServerConfig):
        self._slot = slot
        self._executor = executor
        self._config = config
        self._budget = MemoryBudget(config.memory_budget_mb * 2**20, config.workers)

    def on_post(self, req, resp, endpoint_name: str | None = None):
        config = self._config
        engine = self._slot.engine
        if engine is None:
            raise ServiceUnavailable("model is loading", config.retry_after_s)
        # Everything decided from headers comes first, before the body is touched.
        request_image_type(req.content_type)
        options = parse_custom_attributes(req.get_header(CUSTOM_ATTRIBUTES_HEADER), engine.class_names)
        response_type = choose_response_type(req.get_header("Accept"), options.response_type,
                                              config.default_accept)
        data = read_body(req.bounded_stream, req.content_length, config.max_body_bytes)
        # Always validate untrusted input: the header's size, before any pixel is decoded.
        # its own limit: a header over it is refused without walking the rest of the body
        info = probe_image(data, max_megapixels=config.max_megapixels)
        req.context.image_size = [info.width, info.height]
        if info.megapixels > config.max_megapixels:
            raise PayloadTooLarge(f"image is {info.width}x{info.height} = {info.megapixels:.1f} "
                                  f"megapixels; the limit is {config.max_megapixels:g}")
        try:
            ticket = self._budget.admit(len(data), info.width * info.height, self._slot.inference_bytes)
        except MemoryBudgetError as exc:
            raise ServiceUnavailable(f"server busy: {exc}; retry later", config.retry_after_s) from None
        try:
            result = self._executor.run(run_invocation, engine, data, options, response_type,
                                        config.jpeg_quality, info, timeout=config.timeout_s)
        except QueueFullError as exc:
            raise ServiceUnavailable(f"server busy: {exc}; retry later", config.retry_after_s) from None
        except InferenceTimeoutError as exc:
            raise GatewayTimeout(str(exc)) from None
        except ShuttingDownError as exc:  # the draining event loop closes the connection once this is sent
            raise ServiceUnavailable(f"{exc}; retry", config.retry_after_s) from None
        finally:
            self._budget.release(ticket)
        req.context.detections = result.detections
        req.context.inference_ms = round(result.inference_ms, 1)
        resp.content_type = result.content_type
        resp.data = result.body
        resp.set_header(CUSTOM_ATTRIBUTES_HEADER, json.dumps(
            {"model": engine.model_name[:200], "inference_ms": round(result.inference_ms, 1),
             "detections": result.detections}, separators=(",", ":")))


class PageResource:
    """GET /: the web page, a plain client of /invocations (its assets are under /static)."""

    def __init__(self, static_dir: Path):
        self._index = static_dir / "index.html"

    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_HTML
        resp.data = self._index.read_bytes()
        resp.set_header("Content-Security-Policy", PAGE_CSP)
        resp.set_header("X-Content-Type-Options", "nosniff")

    on_head = on_get  # Falcon sends no body for HEAD


class OpenApiResource:
    """GET /openapi.json: the API's OpenAPI 3.1 document, the packaged file until the model is
    loaded, then made exact for it (server/openapi.py)."""

    def __init__(self, slot: EngineSlot, documents: OpenApiDocuments):
        self._slot = slot
        self._documents = documents

    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._documents.for_engine(self._slot.engine)


class ExecutionParametersResource:
    """GET /execution-parameters: what a Batch Transform job should use when it sets nothing.

    BatchStrategy is spelt as the CreateTransformJob API spells it ("SingleRecord"), not as
    the container guide's example and the SAGEMAKER_BATCH_STRATEGY variable do
    ("SINGLE_RECORD"). The SageMaker Python SDK's local mode passes this value to its own
    batcher, which raises on anything but "SingleRecord" / "MultiRecord"
    (sagemaker.local.data.get_batch_strategy_instance); and its default when the field is
    missing, MultiRecord, concatenates records as text and breaks on binary images. The
    service reads the field as the job's BatchStrategy; containers in production answer it
    with either spelling (inference-server's enum values are the API's). With images there
    is no SplitType, so one file is one record and one request whatever the strategy.
    MaxPayloadInMB is capped at 100, the API's maximum.
    """

    def __init__(self, config: ServerConfig):
        self._config = config

    def on_get(self, req, resp):
        resp.media = {
            "MaxConcurrentTransforms": self._config.workers,
            "BatchStrategy": BATCH_STRATEGY,
            "MaxPayloadInMB": min(self._config.max_payload_mb, MAX_TRANSFORM_PAYLOAD_MB),
        }


class OnlyDeclaredMethods:
    """405 for OPTIONS too: Falcon answers it by default (200 + Allow), but the contract is
    that a route answers its own methods and nothing else."""

    def process_resource(self, req, resp, resource, params):
        if req.method == "OPTIONS" and resource is not None and not hasattr(resource, "on_options"):
            allowed = [m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH") if hasattr(resource, f"on_{m.lower()}")]
            raise falcon.HTTPMethodNotAllowed(allowed)


class RequestLogger:
    """One structured log record per request (record.fields holds the JSON-able fields)."""

    def process_request(self, req, resp):
        req.context.start = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded):
        ctx = req.context
        status = falcon.http_status_to_code(resp.status)
        fields = {
            "method": req.method,
            "path": req.path,
            "status": status,
            "content_type": media_type(req.content_type) or None,
            "accept": req.get_header("Accept"),
            "response_type": media_type(resp.content_type) or None,
            "request_bytes": req.content_length,
            "response_bytes": len(resp.data) if resp.data is not None else None,
            "image_size": ctx.get("image_size"),
            "detections": ctx.get("detections"),
            "inference_ms": ctx.get("inference_ms"),
            "ms": round((time.perf_counter() - ctx.get("start", time.perf_counter())) * 1e3, 1),
        }
        if status >= 400:
            fields["error"] = ctx.get("error")
        logger.info("%s %s %s", req.method, req.path, status, extra={"fields": fields})


def create_app(engine, config: ServerConfig | None = None,
               executor: InferenceExecutor | None = None) -> falcon.App:
    """Build the WSGI app.

    Args:
        engine: an object with the `engine.Engine` surface (predict, class_names,
            model_name, backend_name), or an `EngineSlot` that is filled in later (then
            /ping answers 503 until it is).
        config: deployment settings; defaults if None.
        executor: admission control for inferences; by default one sized from config.
    """
    config = config or ServerConfig()
    slot = engine if isinstance(engine, EngineSlot) else EngineSlot(engine)
    # inference threads render the image answers: their OpenCV text set-up is done up front
    executor = executor or InferenceExecutor(config.workers, config.queue_size, initializer=prepare_thread)
    app = falcon.App(middleware=[RequestLogger(), OnlyDeclaredMethods()])
    app.req_options.strip_url_path_trailing_slash = True
    invocations = InvocationsResource(slot, executor, config)
    app.add_route("/ping", PingResource(slot, config))
    app.add_route("/invocations", invocations)
    app.add_route("/endpoints/{endpoint_name}/invocations", invocations)
    app.add_route("/execution-parameters", ExecutionParametersResource(config))
    app.add_route("/", PageResource(STATIC_DIR))
    app.add_route("/openapi.json", OpenApiResource(slot, OpenApiDocuments(OPENAPI_PATH)))
    app.add_static_route("/static", STATIC_DIR)
    errors.install(app)
    return app
