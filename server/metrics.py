"""Prometheus metrics, served at GET /metrics in the text exposition format.

SageMaker scrapes a container's /metrics into CloudWatch when the endpoint config asks for
detailed observability; a user's own Prometheus can scrape it the same way. Every metric is
a `prometheus_client` object in one `CollectorRegistry` per app (so that two apps in one
process, as in the tests, never share counts):

    maskrcnn_requests_total{route, status, response_type}   every request, by route template
    maskrcnn_request_duration_seconds{route}                 end to end, inside the app
    maskrcnn_stage_duration_seconds{stage}                   one invocation's stages (STAGES)
    maskrcnn_queue_wait_seconds                              admitted until a worker started it
    maskrcnn_refusals_total{reason}                          requests refused (REFUSAL_REASONS)
    maskrcnn_queue_depth, maskrcnn_inflight_inferences       read from the executor at scrape
    maskrcnn_detections                                      instances per answered invocation
    maskrcnn_model_info{model, backend, precision, demo}     1 per loaded model
    maskrcnn_inference_memory_bytes{model}                   one inference's working memory
    maskrcnn_memory_budget_bytes, maskrcnn_memory_idle_bytes admission by memory
    maskrcnn_model_loads_total{outcome}, maskrcnn_model_load_seconds   multi-model loading
    process_resident_memory_bytes, process_cpu_seconds_total, ...      prometheus_client's

Cheap by construction: a request costs a handful of counter and histogram updates (a lock
and an add each); the gauges that describe the executor are functions evaluated only when
/metrics is scraped.
"""

from __future__ import annotations

import time

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import ProcessCollector, disable_created_metrics

from .negotiation import media_type

# An invocation's stages, in order. decode: bytes to pixels; preprocess: normalise, resize,
# pad; dense: the backbone, FPN and RPN graph; heads: proposals, the box head, detection
# selection and the mask head; paste: mask crops pasted at photo size (while encoding);
# encode: the answer's body (JSON, or the rendered and compressed image) without the paste.
STAGES = ("decode", "preprocess", "dense", "heads", "paste", "encode")
# Which of the engine's own stage timings (Detections.timings) make up each stage above.
ENGINE_STAGES = {"preprocess": ("preprocess",), "dense": ("dense",),
                 "heads": ("proposals", "box_head", "detections", "mask_head", "postprocess")}
# Why a request was refused, as the `reason` label says it (status in brackets):
# payload_too_large (413, body bytes), too_many_pixels (413, the image header's size),
# unsupported_media_type (415), not_acceptable (406), bad_request (400: bad headers, custom
# attributes, an empty body), undecodable_image (400), queue_full (503), memory_budget (503),
# shutting_down (503 while draining, and at the shutdown deadline), model_loading (503),
# queue_timeout (504: no worker in time), slow_request (408: the request did not arrive in
# time), unknown_model (404 on a multi-model endpoint), model_exists (409),
# insufficient_memory (507: a model load that would pass the memory budget).
REFUSAL_REASONS = ("payload_too_large", "too_many_pixels", "unsupported_media_type", "not_acceptable",
                   "bad_request", "undecodable_image", "queue_full", "memory_budget", "shutting_down",
                   "model_loading", "queue_timeout", "slow_request", "unknown_model", "model_exists",
                   "insufficient_memory")
# Seconds: from a 640x480 JPEG on a GPU to a 40-megapixel PNG on a small CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf"))
DETECTION_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, float("inf"))
MODEL_LOAD_OUTCOMES = ("loaded", "exists", "insufficient_memory", "failed")
UNMATCHED_ROUTE = "unmatched"  # a path no route serves (404): one label value, not one per path


# Without this every counter and histogram also exposes a `_created` timestamp series, which
# CloudWatch would store as one more metric each.
disable_created_metrics()


class Metrics:
    """The server's metrics and the Falcon middleware that counts requests.

    `bind_executor` and `bind_memory_budget` give the scrape-time gauges their sources;
    `model_loaded` / `model_unloaded` keep the per-model series in step with what is served.
    """

    def __init__(self):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and the rest
        r = self.registry
        self.requests = Counter("maskrcnn_requests", "HTTP requests answered, by route template, status and "
                                "the answer's media type", ["route", "status", "response_type"], registry=r)
        self.request_seconds = Histogram("maskrcnn_request_duration_seconds", "Time inside the app, from the "
                                         "request's arrival to its answer, by route template", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("maskrcnn_stage_duration_seconds", "Time per stage of an answered "
                                       "invocation: " + ", ".join(STAGES), ["stage"], buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.queue_wait_seconds = Histogram("maskrcnn_queue_wait_seconds", "Time an admitted invocation "
                                            "waited for an inference worker", buckets=LATENCY_BUCKETS, registry=r)
        self.refusals = Counter("maskrcnn_refusals", "Requests refused, by reason", ["reason"], registry=r)
        for reason in REFUSAL_REASONS:  # every reason is a series from the start: rate() works at once
            self.refusals.labels(reason)
        self.detections = Histogram("maskrcnn_detections", "Instances in an answered invocation",
                                    buckets=DETECTION_BUCKETS, registry=r)
        self.queue_depth = Gauge("maskrcnn_queue_depth", "Admitted invocations waiting for a worker", registry=r)
        self.inflight = Gauge("maskrcnn_inflight_inferences", "Invocations running on a worker", registry=r)
        self.model_info = Gauge("maskrcnn_model_info", "1 for each model loaded: its name, backend, precision "
                                "and whether it is the bundled demo model",
                                ["model", "backend", "precision", "demo"], registry=r)
        self.inference_memory = Gauge("maskrcnn_inference_memory_bytes", "One inference's working memory "
                                      "over the loaded model, measured at warm-up", ["model"], registry=r)
        self.memory_budget = Gauge("maskrcnn_memory_budget_bytes", "The memory budget requests and model "
                                   "loads are admitted against", registry=r)
        self.memory_idle = Gauge("maskrcnn_memory_idle_bytes", "The resident size admission last measured "
                                 "with nothing admitted", registry=r)
        self.model_loads = Counter("maskrcnn_model_loads", "Multi-model loads, by outcome: "
                                   + ", ".join(MODEL_LOAD_OUTCOMES), ["outcome"], registry=r)
        for outcome in MODEL_LOAD_OUTCOMES:
            self.model_loads.labels(outcome)
        self.model_load_seconds = Histogram("maskrcnn_model_load_seconds", "Time to load and warm up a model "
                                            "on a multi-model endpoint", buckets=LATENCY_BUCKETS, registry=r)
        self._model_labels: dict[str, tuple[str, ...]] = {}

    # ---- sources read at scrape time -----------------------------------------------------

    def bind_executor(self, executor) -> None:
        self.queue_depth.set_function(lambda: executor.waiting)
        self.inflight.set_function(lambda: executor.running)

    def bind_memory_budget(self, budget) -> None:
        self.memory_budget.set(budget.budget_bytes)
        self.memory_idle.set_function(lambda: budget.idle_bytes or 0)

    # ---- models --------------------------------------------------------------------------

    def model_loaded(self, engine, inference_bytes: int) -> None:
        name = str(getattr(engine, "model_name", ""))
        labels = (name, str(getattr(engine, "backend_name", "")), str(getattr(engine, "precision", "")),
                  str(bool(getattr(engine, "demo", False))).lower())
        self.model_unloaded(name)
        self._model_labels[name] = labels
        self.model_info.labels(*labels).set(1)
        self.inference_memory.labels(name).set(inference_bytes)

    def model_unloaded(self, model_name: str) -> None:
        labels = self._model_labels.pop(model_name, None)
        if labels is not None:
            self.model_info.remove(*labels)
            self.inference_memory.remove(model_name)

    # ---- one invocation ------------------------------------------------------------------

    def observe_invocation(self, stages_s: dict[str, float], detections: int) -> None:
        """`stages_s`: seconds per name in STAGES (missing stages did not run)."""
        for stage, seconds in stages_s.items():
            self.stage_seconds.labels(stage).observe(seconds)
        self.detections.observe(detections)

    def observe_model_load(self, outcome: str, seconds: float) -> None:
        self.model_loads.labels(outcome).inc()
        if outcome == "loaded":
            self.model_load_seconds.observe(seconds)

    def refused(self, reason: str, count: int = 1) -> None:
        self.refusals.labels(reason).inc(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # ---- Falcon middleware ---------------------------------------------------------------

    def process_request(self, req, resp):
        req.context.metrics_start = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded):
        route = req.uri_template or UNMATCHED_ROUTE
        status = str(falcon.http_status_to_code(resp.status))
        # resp.media is serialised after this, as the app's default type (JSON)
        response_type = media_type(resp.content_type) or (falcon.MEDIA_JSON if resp.media is not None else "none")
        self.requests.labels(route, status, response_type).inc()
        self.request_seconds.labels(route).observe(time.perf_counter() - req.context.metrics_start)
        reason = req.context.get("refusal")
        if reason is not None:
            self.refusals.labels(reason).inc()


class MetricsResource:
    """GET /metrics: every metric, in Prometheus' text format."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def on_get(self, req, resp):
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = self._metrics.exposition()
