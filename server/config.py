"""Server settings: defaults, and the environment variables SageMaker (or a user) sets.

The environment is read once, by the entry point, through `ServerConfig.from_env`; the app
receives a frozen `ServerConfig` and never looks at `os.environ` itself.

| setting           | environment variable(s)                                   | default          |
|-------------------|-----------------------------------------------------------|------------------|
| max_body_bytes    | MASKRCNN_MAX_BODY_BYTES, else SAGEMAKER_MAX_PAYLOAD_IN_MB | 6 MiB (6291456)  |
| max_megapixels    | MASKRCNN_MAX_MEGAPIXELS                                   | 40               |
| workers           | SAGEMAKER_MODEL_SERVER_WORKERS (parallel inferences)      | 1                |
| queue_size        | MASKRCNN_QUEUE_SIZE (requests waiting for a worker)       | 8                |
| timeout_s         | SAGEMAKER_MODEL_SERVER_TIMEOUT                            | 60               |
| default_accept    | SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT                      | application/json |
| retry_after_s     | MASKRCNN_RETRY_AFTER_S (Retry-After of a 503)             | 2                |
| backend           | MASKRCNN_BACKEND (--backend wins)                         | auto             |
| precision         | MASKRCNN_PRECISION (--precision wins): fp32, bf16         | backend's (1)    |
| threads           | MASKRCNN_THREADS (--threads wins; inference threads, shared by workers) | usable cores |
| http_threads      | MASKRCNN_HTTP_THREADS (--http-threads wins)               | (2)              |
| cuda_tf32         | MASKRCNN_CUDA_TF32=1 (TF32 convolutions, onnxruntime-cuda)| 0 (off: parity)  |
| request_timeout_s | MASKRCNN_REQUEST_TIMEOUT_S (whole request must arrive by) | 60               |
| max_connections   | MASKRCNN_MAX_CONNECTIONS (open connections accepted)      | 2000             |
| memory_budget_mb  | MASKRCNN_MEMORY_BUDGET_MB (admission, server.inference)   | 1800             |
| shutdown_deadline_s | MASKRCNN_SHUTDOWN_DEADLINE_S (SIGTERM to last answer)   | 24               |
| multi_model       | SAGEMAKER_MULTI_MODEL=true (any case; server.models)      | false            |

In multi-model mode the memory budget, unless MASKRCNN_MEMORY_BUDGET_MB sets it, is
MULTI_MODEL_MEMORY_SHARE of the memory this container may use (its cgroup limit, else the
machine's): there it decides how many models fit (507 past it), not one model's headroom.

(1) engine.backends.default_precision: bf16 for openvino on a CPU with BF16 instructions (every
graph BF16, the native RoIAlign FP32; only the dense graph where that was not built), else fp32.
(2) requested_http_threads, which must exceed workers + queue_size; without it, workers +
queue_size + SPARE_HTTP_THREADS, so that /ping always has a free thread (`http_threads`).

Every name is engine.environment's. The model directory ($SM_MODEL_DIR,
engine.model_directory.defaults), the port ($SAGEMAKER_BIND_TO_PORT, server.__main__) and the
named-model cache ($MASKRCNN_CACHE_DIR, engine.model_directory.named) are read where they are
resolved; Dockerfile.gpu's start script reads MASKRCNN_TENSORRT and MASKRCNN_PLAN_CACHE.
docs/configuration.md lists them all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from engine import environment as env
from engine.backends import AUTO_BACKEND, BACKEND_CHOICES, PRECISIONS
from engine.media_types import JSON, RESPONSE_TYPES
from engine.model_directory.defaults import DEFAULT_MODEL_DIR  # noqa: F401  (the engine owns it; serve's default too)

MIB = 1024 * 1024
DEFAULT_PORT = 8080
DEFAULT_HOST = "0.0.0.0"
# SageMaker real-time endpoints refuse request and response bodies over 6 MiB.
DEFAULT_MAX_BODY_BYTES = 6 * MIB
# A 40-megapixel image is 120 MB of RGB pixels before the engine allocates anything.
DEFAULT_MAX_MEGAPIXELS = 40.0
# The engine spreads one inference over every core; more workers would oversubscribe them.
DEFAULT_WORKERS = 1
DEFAULT_QUEUE_SIZE = 8
DEFAULT_TIMEOUT_S = 60.0  # SageMaker gives /invocations 60 s
DEFAULT_ACCEPT = JSON
DEFAULT_RETRY_AFTER_S = 2
# A request whose headers and body have not all arrived this long after its first byte is
# dropped (408): SageMaker's own limit for a whole invocation is 60 s.
DEFAULT_REQUEST_TIMEOUT_S = 60.0
# waitress stops accepting at its connection limit (100 by default), which a hundred stalled
# clients could reach, and then /ping starves; a stalled connection costs little here.
DEFAULT_MAX_CONNECTIONS = 2000
# Admission by memory (server.inference.MemoryBudget), sized for a 2 GiB instance with the R50
# model: above its idle size and the measured peak of a full queue of 40-megapixel PNG
# answers, below the instance's memory (benchmarks/memory_budget.py).
DEFAULT_MEMORY_BUDGET_MB = 1800
# After SIGTERM every accepted request has its answer (or a 503) by this deadline, and the
# process exits about a second later: SageMaker sends SIGKILL 30 s after SIGTERM.
DEFAULT_SHUTDOWN_DEADLINE_S = 24.0
# Multi-model mode's default memory budget, as a share of the container's memory: the rest
# is the headroom for what admission cannot see (the interpreter, libraries, page cache).
MULTI_MODEL_MEMORY_SHARE = 0.85
# HTTP threads beyond workers + queue_size: these answer /ping while inference is busy.
SPARE_HTTP_THREADS = 2
# Limits fixed by the API rather than by deployment.
MAX_CUSTOM_ATTRIBUTES_CHARS = 1024  # SageMaker's limit for X-Amzn-SageMaker-Custom-Attributes
MAX_DETECTIONS_LIMIT = 1000


@dataclass(frozen=True)
class ServerConfig:
    """Everything the HTTP app needs to know about its deployment."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    workers: int = DEFAULT_WORKERS
    queue_size: int = DEFAULT_QUEUE_SIZE
    timeout_s: float = DEFAULT_TIMEOUT_S
    default_accept: str = DEFAULT_ACCEPT
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    jpeg_quality: int = 90
    backend: str = AUTO_BACKEND  # one of engine.backends.BACKEND_CHOICES
    precision: str | None = None  # None: the backend's default here (engine.backends.default_precision)
    threads: int | None = None  # inference threads in all; None: every core this process may use
    requested_http_threads: int | None = None  # None: http_threads' default
    cuda_tf32: bool = False
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB
    shutdown_deadline_s: float = DEFAULT_SHUTDOWN_DEADLINE_S
    multi_model: bool = False

    def __post_init__(self):
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        if not self.max_megapixels > 0:
            raise ValueError(f"max_megapixels must be positive, got {self.max_megapixels}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be 0 or more, got {self.queue_size}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        if self.backend not in BACKEND_CHOICES:
            raise ValueError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, got {self.backend!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be {' or '.join(PRECISIONS)}, got {self.precision!r}")
        if not self.shutdown_deadline_s > 0:
            raise ValueError(f"shutdown_deadline_s must be positive, got {self.shutdown_deadline_s}")
        if self.memory_budget_mb < 1:
            raise ValueError(f"memory_budget_mb must be at least 1, got {self.memory_budget_mb}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.requested_http_threads is not None and self.requested_http_threads <= self.workers + self.queue_size:
            raise ValueError(f"HTTP threads ({self.requested_http_threads}) must exceed inference workers "
                             f"({self.workers}) + queue size ({self.queue_size}), or /ping could starve")
        if self.default_accept not in RESPONSE_TYPES:
            raise ValueError(f"default_accept must be one of {', '.join(RESPONSE_TYPES)}, "
                             f"got {self.default_accept!r}")

    @property
    def max_payload_mb(self) -> int:
        """The body limit in whole MiB, as Batch Transform's MaxPayloadInMB wants it."""
        return max(1, math.floor(self.max_body_bytes / MIB))

    def threads_per_worker(self, available: int) -> int:
        """Inference threads for each worker: `threads` (else `available`, the usable cores)
        shared among the workers rather than oversubscribed."""
        return max(1, (self.threads or available) // self.workers)

    @property
    def http_threads(self) -> int:
        """The HTTP threads: requested_http_threads, else enough that a full inference queue
        still leaves some for /ping."""
        if self.requested_http_threads is not None:
            return self.requested_http_threads
        return self.workers + self.queue_size + SPARE_HTTP_THREADS

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "ServerConfig":
        """Defaults overridden by the environment; raises ValueError naming a bad variable."""
        kw = {}
        if env.SAGEMAKER_MAX_PAYLOAD_IN_MB in environ:
            kw["max_body_bytes"] = round(_number(environ, env.SAGEMAKER_MAX_PAYLOAD_IN_MB, float) * MIB)
        if env.MASKRCNN_MAX_BODY_BYTES in environ:  # exact bytes; wins over the MiB figure
            kw["max_body_bytes"] = _number(environ, env.MASKRCNN_MAX_BODY_BYTES, int)
        for key, name, kind in [
            ("max_megapixels", env.MASKRCNN_MAX_MEGAPIXELS, float),
            ("workers", env.SAGEMAKER_MODEL_SERVER_WORKERS, int),
            ("queue_size", env.MASKRCNN_QUEUE_SIZE, int),
            ("timeout_s", env.SAGEMAKER_MODEL_SERVER_TIMEOUT, float),
            ("retry_after_s", env.MASKRCNN_RETRY_AFTER_S, int),
            ("threads", env.MASKRCNN_THREADS, int),
            ("requested_http_threads", env.MASKRCNN_HTTP_THREADS, int),
            ("request_timeout_s", env.MASKRCNN_REQUEST_TIMEOUT_S, float),
            ("max_connections", env.MASKRCNN_MAX_CONNECTIONS, int),
            ("memory_budget_mb", env.MASKRCNN_MEMORY_BUDGET_MB, int),
            ("shutdown_deadline_s", env.MASKRCNN_SHUTDOWN_DEADLINE_S, float),
        ]:
            if name in environ:
                kw[key] = _number(environ, name, kind)
        accept = environ.get(env.SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT, "").strip().lower()
        if accept:
            kw["default_accept"] = accept
        if environ.get(env.MASKRCNN_BACKEND, "").strip():
            kw["backend"] = environ[env.MASKRCNN_BACKEND].strip()
        if environ.get(env.MASKRCNN_PRECISION, "").strip():
            kw["precision"] = environ[env.MASKRCNN_PRECISION].strip().lower()
        multi_model = environ.get(env.SAGEMAKER_MULTI_MODEL, "").strip().lower()
        if multi_model not in ("", "true", "false"):
            raise ValueError(f"environment variable {env.SAGEMAKER_MULTI_MODEL}={environ[env.SAGEMAKER_MULTI_MODEL]!r} "
                             f"must be true or false")
        if multi_model == "true":
            kw["multi_model"] = True
            if env.MASKRCNN_MEMORY_BUDGET_MB not in environ:
                kw["memory_budget_mb"] = max(1, int(container_memory_bytes() * MULTI_MODEL_MEMORY_SHARE) // MIB)
        tf32 = environ.get(env.MASKRCNN_CUDA_TF32, "").strip()
        if tf32:
            if tf32 not in ("0", "1"):
                raise ValueError(f"environment variable {env.MASKRCNN_CUDA_TF32}={tf32!r} must be 0 or 1")
            kw["cuda_tf32"] = tf32 == "1"
        try:
            return cls(**kw)
        except ValueError as exc:
            raise ValueError(f"invalid server setting from the environment: {exc}") from None


def container_memory_bytes(cgroup_root: str = "/sys/fs/cgroup", meminfo: str = "/proc/meminfo") -> int:
    """The memory this process may use: its cgroup's limit (v2 memory.max, v1
    memory.limit_in_bytes) where one is set, else the machine's MemTotal."""
    total = 0
    try:
        with open(meminfo) as f:
            total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        pass
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            with open(f"{cgroup_root}/{name}") as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit() and (not total or int(raw) < total):  # v1 says "no limit" with a huge number
            return int(raw)
    return total or DEFAULT_MEMORY_BUDGET_MB * MIB


def _number(environ: Mapping[str, str], name: str, kind: type):
    raw = environ[name].strip()
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a valid {kind.__name__}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"environment variable {name}={raw!r} is not a finite number")
    return value
