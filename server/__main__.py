"""`serve` / `python -m server`: load the model and serve the SageMaker contract on waitress.

    serve [serve] [--model-dir DIR | --model coco-v1 [--weights PATH]] [--host 0.0.0.0] [--port 8080]
          [--backend auto] [--precision fp32|bf16] [--threads N] [--http-threads N]

A leading `serve` argument is ignored: SageMaker starts containers as `docker run IMAGE
serve`, and with `ENTRYPOINT ["serve"]` that word arrives here as the first argument.

The model directory is --model-dir, else $SM_MODEL_DIR, else /opt/ml/model (where SageMaker
unpacks model.tar.gz). With none of them, the demo model shipped in the `demo` package
(demo/model: circles, squares and triangles) is served, so a fresh machine works offline.
`--model coco-v1` (or `coco-v2`; `--coco` is coco-v1) serves torchvision's COCO model instead,
and `--model detectron2-r50-fpn-3x` (or -r101-fpn-3x, -x101-32x8d-fpn-3x) one of detectron2's
model-zoo COCO models, built on first use under the cache folder (the `provision` package),
before the socket opens.

Start-up order matters to SageMaker: the socket is listening at once, /ping answers 503
while a background thread loads the model and runs one warm-up inference, then 200.
SIGTERM or SIGINT: stop accepting, finish what can be finished before the shutdown deadline
(MASKRCNN_SHUTDOWN_DEADLINE_S, inside SageMaker's 30 s), answer the rest 503 + Retry-After,
exit 0 (server.serving).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import waitress

from engine import default_threads
from engine.backends import BACKEND_CHOICES, PRECISIONS
from engine.environment import (MASKRCNN_BACKEND, MASKRCNN_HTTP_THREADS, MASKRCNN_PRECISION, MASKRCNN_THREADS,
                                SAGEMAKER_BIND_TO_PORT, SAGEMAKER_MULTI_MODEL)
from engine.errors import EngineError, ModelDirError
# re-exported: `from server.__main__ import bundled_model_dir, resolve_model_dir` keeps working
from engine.model_directory.defaults import bundled_model_dir, resolve_model_dir  # noqa: F401
from engine.model_directory.named import NAMED_MODELS
from engine.render import prepare_thread
from provision import ensure_named_model

from .app import create_app
from .config import DEFAULT_HOST, DEFAULT_MODEL_DIR, DEFAULT_PORT, SPARE_HTTP_THREADS, ServerConfig
from .inference import InferenceExecutor
from .metrics import Metrics
from .models import EngineSlot, load_engine
from .serving import serve_until

# Under `python -m server` this module is "__main__"; name it as the `serve` script sees it.
logger = logging.getLogger("server.__main__" if __name__ == "__main__" else __name__)

def resolve_port(arg: int | None, environ: Mapping[str, str]) -> int:
    """--port, else $SAGEMAKER_BIND_TO_PORT, else 8080."""
    raw = arg if arg is not None else environ.get(SAGEMAKER_BIND_TO_PORT, DEFAULT_PORT)
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"invalid port {raw!r} (from ${SAGEMAKER_BIND_TO_PORT})") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return port


def allow_open_files(wanted: int) -> None:
    """Raise this process's soft open-file limit towards `wanted` (at most the hard limit):
    each connection is a file descriptor, and containers often start with a soft 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        logger.info("open-file limit raised from %d to %d", soft, target)


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv and argv[0] == "serve":
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="serve", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model-dir", help=f"model directory (default: $SM_MODEL_DIR, else "
                       f"{DEFAULT_MODEL_DIR}, else the bundled demo model)")
    which.add_argument("--model", choices=list(NAMED_MODELS),
                       help="torchvision's COCO Mask R-CNN (v1: ResNet-50 FPN, v2: its improved version) or "
                            "detectron2's model-zoo COCO Mask R-CNN (R50/R101/X101-32x8d FPN, 3x schedule), "
                            "built on first use into $MASKRCNN_CACHE_DIR (default ~/.cache/maskrcnn-serve); "
                            "installs torch into this venv and downloads the weights the first time")
    which.add_argument("--coco", action="store_const", const="coco-v1", dest="model", help="--model coco-v1")
    parser.add_argument("--weights", metavar="PATH",
                        help="with --model: build from this weights file instead of downloading it "
                             "(torchvision's state_dict, detectron2's model_final .pkl; for machines without network)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, help=f"default: ${SAGEMAKER_BIND_TO_PORT}, else {DEFAULT_PORT}")
    parser.add_argument("--backend", choices=BACKEND_CHOICES,
                        help=f"inference backend (default: ${MASKRCNN_BACKEND}, else auto: the first that can "
                             "run here)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help=f"inference precision (default: ${MASKRCNN_PRECISION}, else the backend's default here: "
                             "bf16 for openvino where the CPU has BF16 instructions, else fp32); fp32 matches "
                             "torchvision at the parity tolerances")
    parser.add_argument("--threads", type=int, metavar="N",
                        help=f"inference threads in all, shared by the inference workers (default: "
                             f"${MASKRCNN_THREADS}, else every usable core)")
    parser.add_argument("--http-threads", type=int, metavar="N",
                        help=f"HTTP threads, more than inference workers + queue size (default: "
                             f"${MASKRCNN_HTTP_THREADS}, else workers + queue size + {SPARE_HTTP_THREADS}, so that "
                             "/ping always has a free thread)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if args.weights and not args.model:
        parser.error("--weights goes with --model (or --coco)")
    return args


def server_config(args: argparse.Namespace, environ: Mapping[str, str]) -> ServerConfig:
    """The settings from the environment, the flags over them; ValueError naming a bad one.

    `--threads` sets inference threads, as $MASKRCNN_THREADS does; HTTP threads are
    `--http-threads`. A `--threads` above the usable cores is logged as a warning: it is
    what someone who meant HTTP threads would give.
    """
    config = ServerConfig.from_env(environ)
    flags = {"backend": args.backend, "precision": args.precision, "threads": args.threads,
             "requested_http_threads": args.http_threads}
    try:
        config = dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})
    except ValueError as exc:
        raise ValueError(f"invalid server setting from the flags: {exc}") from None
    cores = default_threads()
    if args.threads is not None and args.threads > cores:
        logger.warning("--threads %d is more than the %d usable cores: --threads sets inference threads (as $%s); "
                       "HTTP threads are --http-threads", args.threads, cores, MASKRCNN_THREADS,
                       extra={"fields": {"threads": args.threads, "usable_cores": cores}})
    return config


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus record.fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _load_engine(slot: EngineSlot, model_dir: Path, backend: str, precision: str | None, config: ServerConfig,
                 stop: threading.Event, failed: threading.Event) -> None:
    """Load and warm up the engine, then fill the slot (/ping turns 200); on error, stop."""
    start = time.perf_counter()
    try:
        engine, inference_bytes = load_engine(model_dir, config, backend, precision)
    except EngineError as exc:  # the message names the missing or broken file
        logger.error("could not load the model from %s: %s", model_dir, exc)
        failed.set()
        stop.set()
        return
    except Exception:
        logger.exception("could not load the model from %s", model_dir)
        failed.set()
        stop.set()
        return
    slot.set(engine, inference_bytes)
    logger.info("model ready", extra={"fields": {
        "model": engine.model_name, "backend": engine.backend_name, "precision": engine.precision,
        "classes": len(engine.class_names),
        "untrained": engine.untrained, "load_ms": round((time.perf_counter() - start) * 1e3),
        "inference_mb": round(inference_bytes / 2**20)}})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    configure_logging(args.log_level)
    try:
        # the flags win over the environment, for the one model and for every multi-model load
        config = server_config(args, os.environ)
        port = resolve_port(args.port, os.environ)
        if config.multi_model:
            if args.model or args.model_dir:
                raise ValueError(f"with {SAGEMAKER_MULTI_MODEL}=true models are loaded through POST /models; "
                                 f"drop --model/--model-dir (or unset {SAGEMAKER_MULTI_MODEL})")
            model_dir = None
        elif args.model:  # built on first use (minutes); progress on stderr, the JSON log stays on stdout
            model_dir = ensure_named_model(args.model, args.weights, os.environ)
        else:
            model_dir = resolve_model_dir(args.model_dir, os.environ)
    except (ValueError, ModelDirError) as exc:
        sys.exit(f"serve: error: {exc}")

    allow_open_files(config.max_connections + 256)  # the connections, plus the model's files and logs
    slot = None if config.multi_model else EngineSlot()
    # inference threads render the image answers: their OpenCV text set-up is done up front
    executor = InferenceExecutor(config.workers, config.queue_size, initializer=prepare_thread)
    metrics = Metrics()
    app = create_app(slot, config, executor, metrics)
    # waitress's own limit (a plain-text 413) only backs up the app's JSON one.
    try:
        server = waitress.create_server(app, host=args.host, port=port, threads=config.http_threads,
                                        max_request_body_size=4 * config.max_body_bytes,
                                        connection_limit=config.max_connections,
                                        ident="maskrcnn-serve", asyncore_use_poll=True)
    except OSError as exc:  # port taken, address not available
        sys.exit(f"serve: error: cannot listen on {args.host}:{port}: {exc}")
    stop, failed = threading.Event(), threading.Event()

    def on_signal(signum, _frame):
        logger.info("received %s: answering what can be answered within %g s, then exiting",
                    signal.Signals(signum).name, config.shutdown_deadline_s)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    listening = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
    logger.info("listening on %s; %s", ", ".join(f"http://{h}:{p}" for h, p in listening),
                "multi-model: models are loaded through POST /models" if slot is None else "loading the model",
                extra={"fields": {"model_dir": str(model_dir) if model_dir else None,
                                  "http_threads": config.http_threads, "threads": config.threads,
                                  "workers": config.workers, "queue_size": config.queue_size,
                                  "max_body_bytes": config.max_body_bytes, "multi_model": config.multi_model,
                                  "memory_budget_mb": config.memory_budget_mb}})
    if slot is not None:
        threading.Thread(target=_load_engine, args=(slot, model_dir, config.backend, config.precision, config,
                                                    stop, failed),
                         name="model-loader", daemon=True).start()
    answered = serve_until(server, stop, deadline_s=config.shutdown_deadline_s,
                           request_timeout_s=config.request_timeout_s, on_stop=executor.drain,
                           retry_after_s=config.retry_after_s, on_refused=metrics.refused)
    logger.info("stopped")
    code = 1 if failed.is_set() else 0
    if not answered:
        # An inference refused at the deadline may still be running; its thread would hold up
        # the interpreter's exit past SageMaker's SIGKILL.
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
