"""The Falcon app: the SageMaker hosting contract over an injected engine.

    GET  /ping                                   200 once the engine is loaded and warm, else 503
    POST /invocations                            image in, segmented image or JSON out
    POST /endpoints/{endpoint_name}/invocations  the same (what boto3 / the AWS CLI call)
    GET  /execution-parameters                   Batch Transform settings
    GET  /                                       a web page to try the service (server/static/)
    GET  /static/{file}                          its script, style sheet, icon and sample scene
    GET  /openapi.json                           the OpenAPI 3.1 document of all of the above
    GET  /metrics                                Prometheus metrics (server/metrics.py)

With SAGEMAKER_MULTI_MODEL=true, SageMaker's multi-model API too (server/models.py):
POST/GET /models, GET/DELETE /models/{model_name}, POST /models/{model_name}/invoke, and
/invocations answers with the model its X-Amzn-SageMaker-Target-Model header names.

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
from engine.model_directory.defaults import demo_notice
from engine.render import prepare_thread

from . import errors
from .config import ServerConfig
from .errors import BadRequest, GatewayTimeout, PayloadTooLarge, ServiceUnavailable
from .inference import (InferenceExecutor, InferenceTimeoutError, MemoryBudget, MemoryBudgetError, QueueFullError,
                        ShuttingDownError)
from .metrics import Metrics, MetricsResource
from .models import TARGET_MODEL_HEADER, EngineSlot, ModelRegistry, check_model_name
from .negotiation import (CUSTOM_ATTRIBUTES_HEADER, choose_response_type, media_type,
                          parse_custom_attributes, request_image_type, selectable_classes)
from .openapi import OPENAPI_PATH, OpenApiDocuments
from .responses import run_invocation

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
BATCH_STRATEGY = "SingleRecord"  # one image per request (see ExecutionParametersResource)
MAX_TRANSFORM_PAYLOAD_MB = 100  # CreateTransformJob's upper bound for MaxPayloadInMB
MAX_LOAD_REQUEST_BYTES = 64 * 1024  # a multi-model load request is a name and a path
# The page loads only its own script and style sheet and calls only this origin; images it
# shows are blob: URLs of the responses.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")


def read_body(stream, content_length: int | None, limit: int,
              expected: str = "send a JPEG or PNG image") -> bytes:
    """The request body, refusing more than `limit` bytes by header and while reading;
    `expected` says what an empty body should have been."""
    if content_length is not None and content_length > limit:
        raise PayloadTooLarge(f"request body is {content_length} bytes; the limit is {limit}")
    data = stream.read(limit + 1)  # one byte more than allowed tells us it is too big
    if len(data) > limit:
        raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
    if not data:
        raise BadRequest(f"empty request body; {expected}")
    return data


class PingResource:
    def __init__(self, models, config: ServerConfig):
        self._models = models
        self._config = config

    def on_get(self, req, resp):
        if self._models.multi_model:  # healthy with or without models: SageMaker loads them later
            resp.media = {"status": "ok", "multi_model": True, "models": len(self._models)}
            return
        engine = self._models.engine
        if engine is None:  # a health check's answer, not a refused request: no refusal reason
            raise ServiceUnavailable("model is loading", self._config.retry_after_s, None)
        # classes: what the `classes` custom attribute accepts, so that a client (the web page)
        # can offer a class filter for whatever model is served; a short list, built here
        # from the engine's names without touching the inference queue.
        resp.media = {"status": "ok", "model": engine.model_name, "backend": engine.backend_name,
                      "precision": engine.precision, "demo": engine.demo,
                      "classes": selectable_classes(engine.class_names)}
        if engine.demo:  # what the page shows, and what a person reading /ping should know
            resp.media["notice"] = demo_notice(engine.class_names)


class InvocationsResource:
    """POST /invocations (and its aliases): one photo through the model the request names
    (multi-model) or the one model (single-model)."""

    def __init__(self, models, executor: InferenceExecutor, config: ServerConfig, budget: MemoryBudget,
                 metrics: Metrics):
        self._models = models
        self._executor = executor
        self._config = config
        self._budget = budget
        self._metrics = metrics

    def on_post(self, req, resp, endpoint_name: str | None = None, model_name: str | None = None):
        config = self._config
        served = self._models.for_request(req, model_name, config.retry_after_s)
        engine = served.engine
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
                                  f"megapixels; the limit is {config.max_megapixels:g}", reason="too_many_pixels")
        try:
            ticket = self._budget.admit(len(data), info.width * info.height, served.inference_bytes)
        except MemoryBudgetError as exc:
            raise ServiceUnavailable(f"server busy: {exc}; retry later", config.retry_after_s,
                                     "memory_budget") from None
        try:
            result = self._executor.run(run_invocation, engine, data, options, response_type,
                                        config.jpeg_quality, info, timeout=config.timeout_s)
        except QueueFullError as exc:
            raise ServiceUnavailable(f"server busy: {exc}; retry later", config.retry_after_s, "queue_full") from None
        except InferenceTimeoutError as exc:
            raise GatewayTimeout(str(exc)) from None
        except ShuttingDownError as exc:  # the draining event loop closes the connection once this is sent
            raise ServiceUnavailable(f"{exc}; retry", config.retry_after_s, "shutting_down") from None
        finally:
            self._budget.release(ticket)
        self._metrics.observe_invocation(result.stages_s, result.detections)
        req.context.detections = result.detections
        req.context.inference_ms = round(result.inference_ms, 1)
        resp.content_type = result.content_type
        resp.data = result.body
        resp.set_header(CUSTOM_ATTRIBUTES_HEADER, json.dumps(
            {"model": engine.model_name[:200], "inference_ms": round(result.inference_ms, 1),
             "detections": result.detections}, separators=(",", ":")))


class ModelsResource:
    """POST /models (load) and GET /models (list, paginated): SageMaker's multi-model API."""

    def __init__(self, registry: ModelRegistry, executor: InferenceExecutor, config: ServerConfig):
        self._registry = registry
        self._executor = executor
        self._config = config

    def on_post(self, req, resp):
        if self._executor.draining:
            raise ServiceUnavailable("the server is shutting down; load the model elsewhere",
                                     self._config.retry_after_s, "shutting_down")
        data = read_body(req.bounded_stream, req.content_length, MAX_LOAD_REQUEST_BYTES,
                         'send JSON {"model_name": NAME, "url": MODEL_DIR}')
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"the body must be JSON {{\"model_name\": ..., \"url\": ...}}: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("url"), str) or not body["url"]:
            raise BadRequest('the body must be a JSON object {"model_name": NAME, "url": MODEL_DIR}')
        served = self._registry.load(check_model_name(body.get("model_name")), body["url"])
        resp.media = {"status": f"model {served.name!r} loaded", **served.description()}

    def on_get(self, req, resp):
        limit = req.get_param_as_int("limit")
        page, token = self._registry.page(limit, req.get_param("next_page_token"))
        resp.media = {"models": [{"modelName": m.name, "modelUrl": m.url} for m in page]}
        if token is not None:
            resp.media["nextPageToken"] = token


class ModelResource:
    """GET /models/{model_name} (describe) and DELETE /models/{model_name} (unload)."""

    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def on_get(self, req, resp, model_name: str):
        resp.media = self._registry.get(model_name).description()

    def on_delete(self, req, resp, model_name: str):
        description = self._registry.unload(model_name)
        resp.media = {"status": f"model {model_name!r} unloaded", "modelName": model_name,
                      "modelUrl": description["modelUrl"]}


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

    def __init__(self, models, documents: OpenApiDocuments):
        self._models = models
        self._documents = documents

    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_JSON
        # a multi-model server's models differ in their classes: the generic document
        resp.data = self._documents.for_engine(getattr(self._models, "engine", None))


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
            "target_model": req.get_header(TARGET_MODEL_HEADER),
            "image_size": ctx.get("image_size"),
            "detections": ctx.get("detections"),
            "inference_ms": ctx.get("inference_ms"),
            "ms": round((time.perf_counter() - ctx.get("start", time.perf_counter())) * 1e3, 1),
        }
        if status >= 400:
            fields["error"] = ctx.get("error")
        logger.info("%s %s %s", req.method, req.path, status, extra={"fields": fields})


def create_app(engine, config: ServerConfig | None = None,
               executor: InferenceExecutor | None = None, metrics: Metrics | None = None) -> falcon.App:
    """Build the WSGI app.

    Args:
        engine: an object with the `engine.Engine` surface (predict, class_names,
            model_name, backend_name), or an `EngineSlot` that is filled in later (then
            /ping answers 503 until it is), or a `ModelRegistry` (multi-model mode; None
            with config.multi_model makes an empty one).
        config: deployment settings; defaults if None.
        executor: admission control for inferences; by default one sized from config.
        metrics: what /metrics serves; by default a fresh set for this app.
    """
    config = config or ServerConfig()
    if isinstance(engine, (EngineSlot, ModelRegistry)):
        models = engine
    elif engine is None and config.multi_model:
        models = ModelRegistry(config)
    else:
        models = EngineSlot(engine)
    # inference threads render the image answers: their OpenCV text set-up is done up front
    executor = executor or InferenceExecutor(config.workers, config.queue_size, initializer=prepare_thread)
    metrics = metrics or Metrics()
    budget = MemoryBudget(config.memory_budget_mb * 2**20, config.workers)
    metrics.bind_executor(executor)
    metrics.bind_memory_budget(budget)
    executor.wait_observer = metrics.queue_wait_seconds.observe
    app = falcon.App(middleware=[RequestLogger(), metrics, OnlyDeclaredMethods()])
    app.req_options.strip_url_path_trailing_slash = True
    invocations = InvocationsResource(models, executor, config, budget, metrics)
    app.add_route("/ping", PingResource(models, config))
    app.add_route("/invocations", invocations)
    app.add_route("/endpoints/{endpoint_name}/invocations", invocations)
    if models.multi_model:
        models.budget = budget
        models.loaded_observers.append(metrics.model_loaded)
        models.unloaded_observers.append(metrics.model_unloaded)
        models.load_observers.append(metrics.observe_model_load)
        app.add_route("/models", ModelsResource(models, executor, config))
        app.add_route("/models/{model_name}", ModelResource(models))
        app.add_route("/models/{model_name}/invoke", invocations)
    else:
        models.observers.append(metrics.model_loaded)
        if models.ready:
            metrics.model_loaded(models.engine, models.inference_bytes)
    app.add_route("/execution-parameters", ExecutionParametersResource(config))
    app.add_route("/", PageResource(STATIC_DIR))
    app.add_route("/openapi.json", OpenApiResource(models, OpenApiDocuments(OPENAPI_PATH, multi_model=models.multi_model)))
    app.add_route("/metrics", MetricsResource(metrics))
    app.add_static_route("/static", STATIC_DIR)
    errors.install(app)
    return app
