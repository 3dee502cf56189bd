"""The models a server answers with: one (`EngineSlot`), or many (`ModelRegistry`).

Single-model mode (the default) serves the model directory given at start; multi-model mode
(SAGEMAKER_MULTI_MODEL=true) starts with none and implements SageMaker's multi-model
contract, in which SageMaker itself decides what is loaded:

    POST   /models                 {"model_name": NAME, "url": DIR}: load DIR as NAME
                                   (409 if NAME is loaded or loading, 507 if it would not fit
                                   the memory budget: SageMaker then unloads models and retries)
    GET    /models                 {"models": [{"modelName", "modelUrl"}, ...], "nextPageToken"}
                                   (?limit=N&next_page_token=T pages through them by name)
    GET    /models/{name}          one model, with what it runs on and its measured memory
    DELETE /models/{name}          unload it (404 if it is not loaded)
    POST   /models/{name}/invoke   an invocation of that model, exactly as /invocations

NAME is SageMaker's opaque identifier (not necessarily the TargetModel the caller gave, which
arrives as the X-Amzn-SageMaker-Target-Model header for logging). /invocations (and the
/endpoints/{endpoint}/invocations that boto3 calls, which carries TargetModel in that same
header) picks the loaded model named by the header, so that `invoke_endpoint(TargetModel=...)`
against a local server reaches the model loaded under that name.

Both kinds answer `for_request(req, model_name)` with a `ServedModel` (engine + its measured
inference memory), so every model keeps the single-model behaviour: negotiation, custom
attributes, limits, admission, draining.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import EngineError

from .errors import BadRequest, Conflict, InsufficientStorage, NotFound, ServiceUnavailable
from .inference import _rss_bytes, peak_growth
from .negotiation import selectable_classes

logger = logging.getLogger(__name__)

TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_MODEL_NAME_CHARS = 1024
# A model's resident size once loaded, per byte of its graph files: the runtime keeps the
# weights and compiles them into its own layout (OpenVINO, ONNX Runtime's prepacking); the
# figures behind it are in docs/multi-model.md.
LOADED_BYTES_PER_WEIGHT_BYTE = 2.0
# Files that hold a model's weights (ONNX graphs, OpenVINO IR, TensorRT plans).
WEIGHT_SUFFIXES = (".onnx", ".bin", ".xml", ".plan", ".engine")


@dataclass
class ServedModel:
    """A loaded, warmed-up engine. `inference_bytes`: one inference's working memory over
    the loaded model, measured at warm-up (server.inference.MemoryBudget counts it);
    `memory_bytes`: how far the process grew while loading and warming it up."""

    name: str
    engine: object
    inference_bytes: int = 0
    url: str = ""
    memory_bytes: int = 0
    load_s: float = 0.0
    loaded_at: float = field(default_factory=time.time)

    def description(self) -> dict:
        engine = self.engine
        return {"modelName": self.name, "modelUrl": self.url, "model": engine.model_name,
                "backend": engine.backend_name, "precision": engine.precision, "demo": engine.demo,
                "classes": selectable_classes(engine.class_names), "memoryBytes": self.memory_bytes,
                "inferenceMemoryBytes": self.inference_bytes, "loadSeconds": round(self.load_s, 3),
                "loadedAt": round(self.loaded_at, 3)}


def load_engine(model_dir, config, backend: str | None = None, precision: str | None = None):
    """Open `model_dir` on the configured backend and warm it up: (engine, inference_bytes).
    Raises engine.errors.EngineError (ModelDirError names the missing or broken file)."""
    from engine import Engine, default_threads

    engine = Engine.load(model_dir, backend=backend or config.backend,
                         threads=config.threads_per_worker(default_threads()),
                         cuda_tf32=config.cuda_tf32, precision=precision or config.precision)
    # what one inference needs over the loaded model (its arena's first fill included):
    # admission by memory counts it once per further concurrent inference
    return engine, peak_growth(engine.warmup)


class EngineSlot:
    """Single-model mode: holds the engine once it is loaded and warmed up; empty until then.

    The server starts accepting connections before the model is loaded (SageMaker wants a
    socket quickly), so /ping and /invocations look here to know whether they can serve.
    `inference_bytes`: one inference's working memory, measured at warm-up (0 if unknown).
    `observers` are called with (engine, inference_bytes) when it is set (the metrics).
    """

    multi_model = False

    def __init__(self, engine=None, inference_bytes: int = 0):
        self._served = ServedModel("", engine, inference_bytes) if engine is not None else None
        self.observers: list = []

    @property
    def engine(self):
        return self._served.engine if self._served else None

    @property
    def inference_bytes(self) -> int:
        return self._served.inference_bytes if self._served else 0

    @property
    def ready(self) -> bool:
        return self._served is not None

    def set(self, engine, inference_bytes: int = 0) -> None:
        self._served = ServedModel(getattr(engine, "model_name", ""), engine, inference_bytes)
        for observe in self.observers:
            observe(engine, inference_bytes)

    def for_request(self, req, model_name: str | None, retry_after_s: int) -> ServedModel:
        if self._served is None:
            raise ServiceUnavailable("model is loading", retry_after_s, "model_loading")
        return self._served


class ModelRegistry:
    """Multi-model mode: the models loaded by name (see the module docstring).

    Loads run one at a time (each checks the memory budget against what the process holds
    then); a model being loaded is "loading" and a second load of its name is a 409.
    Unloading drops the registry's reference; an invocation already holding the engine
    finishes with it, and the memory returns once the last one does.
    """

    multi_model = True

    def __init__(self, config, budget=None, load=load_engine, measure=_rss_bytes):
        """`budget`: the app's MemoryBudget (create_app sets it); `load(path, config)` makes
        (engine, inference_bytes); `measure()` is the process's resident bytes."""
        self._config = config
        self.budget = budget
        self._load = load
        self._measure = measure
        self._models: dict[str, ServedModel] = {}
        self._loading: set[str] = set()
        self._lock = threading.Lock()  # guards _models and _loading
        self._one_load_at_a_time = threading.Lock()
        self.loaded_observers: list = []  # called with (engine, inference_bytes)
        self.unloaded_observers: list = []  # called with the model's engine.model_name
        self.load_observers: list = []  # called with (outcome, seconds)

    # ---- what the routes call ----------------------------------------------------------

    def for_request(self, req, model_name: str | None, retry_after_s: int) -> ServedModel:
        """The model a request names: the route's {name}, else the target-model header."""
        # the route's name, even empty (then no model has it), else the header's
        name = model_name if model_name is not None else req.get_header(TARGET_MODEL_HEADER)
        if name is None or (model_name is None and not name):
            raise BadRequest(f"this is a multi-model endpoint: name the model in the {TARGET_MODEL_HEADER} header "
                             f"(boto3: invoke_endpoint(TargetModel=...)) or POST /models/{{name}}/invoke")
        with self._lock:
            served = self._models.get(name)
            if served is None and name.endswith(".tar.gz"):  # TargetModel is often the archive's name
                served = self._models.get(name[: -len(".tar.gz")])
            loaded = len(self._models)
        if served is None:
            raise NotFound(f"model {name!r} is not loaded ({loaded} model(s) are); load it with POST /models")
        return served

    def get(self, name: str) -> ServedModel:
        with self._lock:
            served = self._models.get(name)
        if served is None:
            raise NotFound(f"model {name!r} is not loaded")
        return served

    def page(self, limit: int | None, token: str | None) -> tuple[list[ServedModel], str | None]:
        """Up to `limit` models in name order after the page `token` ends; and the token of
        the next page (None on the last)."""
        limit = DEFAULT_PAGE_SIZE if limit is None else limit
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise BadRequest(f"limit must be from 1 to {MAX_PAGE_SIZE}, got {limit}")
        after = _decode_token(token) if token else None
        with self._lock:
            names = sorted(n for n in self._models if after is None or n > after)
            page = [self._models[n] for n in names[:limit]]
        more = len(names) > limit
        return page, (_encode_token(page[-1].name) if more else None)

    def load(self, name: str, url: str, draining: bool = False) -> ServedModel:
        """Load the model directory `url` as `name` and warm it up."""
        check_model_name(name)
        path = Path(url)
        if not path.is_dir():
            raise BadRequest(f"url {url!r} is not a directory in the container")
        if not (path / "model.json").is_file():  # before anything walks the directory's files
            raise BadRequest(f"url {url!r} is not a model directory: it has no model.json")
        with self._lock:
            if name in self._models or name in self._loading:
                self._observe_load("exists", 0.0)
                state = "loaded" if name in self._models else "being loaded"
                raise Conflict(f"model {name!r} is already {state}")
            self._loading.add(name)
        try:
            with self._one_load_at_a_time:
                return self._load_checked(name, path, url)
        finally:
            with self._lock:
                self._loading.discard(name)

    def unload(self, name: str) -> dict:
        """Unload `name`; its description as it was loaded."""
        with self._lock:
            served = self._models.pop(name, None)
        if served is None:
            raise NotFound(f"model {name!r} is not loaded")
        description = served.description()
        for observe in self.unloaded_observers:
            observe(name)
        served = None  # the last reference, unless an invocation still runs on the engine
        release_freed_memory()
        logger.info("unloaded model %s", name, extra={"fields": {"model_name": name}})
        return description

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    # ---- loading -------------------------------------------------------------------------

    def _load_checked(self, name: str, path: Path, url: str) -> ServedModel:
        need = self.estimated_bytes(path)
        resident = self._measure()
        budget = self.budget.budget_bytes
        if len(self) and resident + need > budget:
            self._observe_load("insufficient_memory", 0.0)
            mb = 2**20
            raise InsufficientStorage(
                f"loading {name!r} may need {need // mb} MB over the {resident // mb} MB in use, "
                f"past the {budget // mb} MB memory budget; unload a model first")
        start = time.perf_counter()
        try:
            engine, inference_bytes = self._load(path, self._config)
        except EngineError as exc:
            self._observe_load("failed", time.perf_counter() - start)
            raise BadRequest(f"cannot load model {name!r} from {url}: {exc}") from None
        took = time.perf_counter() - start
        served = ServedModel(name, engine, inference_bytes, url=url,
                             memory_bytes=max(self._measure() - resident, 0), load_s=took)
        # the engine names itself from its model.json; the registry's name is SageMaker's
        engine.model_name = name
        with self._lock:
            self._models[name] = served
        for observe in self.loaded_observers:
            observe(engine, inference_bytes)
        self._observe_load("loaded", took)
        logger.info("loaded model %s", name, extra={"fields": {
            "model_name": name, "url": url, "backend": engine.backend_name, "precision": engine.precision,
            "load_ms": round(took * 1e3), "memory_mb": round(served.memory_bytes / 2**20),
            "inference_mb": round(inference_bytes / 2**20)}})
        return served

    def estimated_bytes(self, path: Path) -> int:
        """What loading `path` may add to the process: its weights as loaded, plus one
        inference's working memory as the loaded models measured it (the warm-up fills it)."""
        weights = sum(p.stat().st_size for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        with self._lock:
            inference = max((m.inference_bytes for m in self._models.values()), default=0)
        return int(weights * LOADED_BYTES_PER_WEIGHT_BYTE) + inference

    def _observe_load(self, outcome: str, seconds: float) -> None:
        for observe in self.load_observers:
            observe(outcome, seconds)


def check_model_name(name) -> str:
    """SageMaker's model_name is one path component (its url is /opt/ml/models/{name}/model)."""
    if not isinstance(name, str) or not name:
        raise BadRequest("model_name must be a non-empty string")
    if len(name) > MAX_MODEL_NAME_CHARS or "/" in name or not name.isprintable():
        raise BadRequest(f"model_name must be at most {MAX_MODEL_NAME_CHARS} printable characters "
                         f"without '/', got {name[:80]!r}")
    return name


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    try:
        name = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        name = None
    if not name or _encode_token(name) != token:  # b64decode skips characters outside its alphabet
        raise BadRequest(f"next_page_token {token[:80]!r} is not one this server gave")
    return name


def release_freed_memory() -> None:
    """Collect the unloaded engine and hand glibc's free pages back to the system, so that
    the next load's memory check sees the room it made (glibc keeps freed heap otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
