"""Every environment variable the project reads (or sets for its container), each name spelled
once, here; every reader imports the name from this module.

The entry points read the environment (`serve` through server.config.ServerConfig.from_env,
`python -m engine`) and hand it on as a mapping. docs/configuration.md documents every name
below (tests/test_config.py checks).
"""

# ---- set by SageMaker ---------------------------------------------------------------------------------

# Where SageMaker unpacks model.tar.gz: the model directory when no --model-dir is given
# (engine.model_directory.defaults).
SM_MODEL_DIR = "SM_MODEL_DIR"
# The port the server listens on when no --port is given (server.__main__).
SAGEMAKER_BIND_TO_PORT = "SAGEMAKER_BIND_TO_PORT"
# The request body limit in MiB (MASKRCNN_MAX_BODY_BYTES, in bytes, wins over it).
SAGEMAKER_MAX_PAYLOAD_IN_MB = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
# Inferences that run at once.
SAGEMAKER_MODEL_SERVER_WORKERS = "SAGEMAKER_MODEL_SERVER_WORKERS"
# Seconds a request may wait for a free inference worker (then 504).
SAGEMAKER_MODEL_SERVER_TIMEOUT = "SAGEMAKER_MODEL_SERVER_TIMEOUT"
# The response type of a request without Accept or response_type.
SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
# "true" (any case): multi-model mode, models loaded through POST /models (server.models).
SAGEMAKER_MULTI_MODEL = "SAGEMAKER_MULTI_MODEL"

# ---- the server's own settings (server.config.ServerConfig) ----------------------------------------------

# The request body limit in exact bytes.
MASKRCNN_MAX_BODY_BYTES = "MASKRCNN_MAX_BODY_BYTES"
# The image size limit in megapixels, read from the image's header before decoding.
MASKRCNN_MAX_MEGAPIXELS = "MASKRCNN_MAX_MEGAPIXELS"
# Requests waiting for an inference worker (beyond them: 503).
MASKRCNN_QUEUE_SIZE = "MASKRCNN_QUEUE_SIZE"
# The Retry-After of a 503, in seconds.
MASKRCNN_RETRY_AFTER_S = "MASKRCNN_RETRY_AFTER_S"
# Seconds a request's headers and body may take to arrive, from its first byte (then 408).
MASKRCNN_REQUEST_TIMEOUT_S = "MASKRCNN_REQUEST_TIMEOUT_S"
# Open connections the server accepts.
MASKRCNN_MAX_CONNECTIONS = "MASKRCNN_MAX_CONNECTIONS"
# The memory the server may reach before it refuses requests with 503 (server.inference).
MASKRCNN_MEMORY_BUDGET_MB = "MASKRCNN_MEMORY_BUDGET_MB"
# After SIGTERM, seconds until every accepted request has its answer (server.serving).
MASKRCNN_SHUTDOWN_DEADLINE_S = "MASKRCNN_SHUTDOWN_DEADLINE_S"
# HTTP threads (serve --http-threads wins): more than workers + queue size, so /ping is answered.
MASKRCNN_HTTP_THREADS = "MASKRCNN_HTTP_THREADS"

# ---- the engine's settings, as the server passes them to Engine.load ---------------------------------

# The inference backend, one of engine.backends.BACKEND_CHOICES (serve --backend wins).
MASKRCNN_BACKEND = "MASKRCNN_BACKEND"
# The inference precision, one of engine.backends.PRECISIONS (serve --precision wins).
MASKRCNN_PRECISION = "MASKRCNN_PRECISION"
# Inference threads in all, shared by the workers (serve --threads wins).
MASKRCNN_THREADS = "MASKRCNN_THREADS"
# "1": TF32 convolutions on onnxruntime-cuda.
MASKRCNN_CUDA_TF32 = "MASKRCNN_CUDA_TF32"

# ---- named models (engine.model_directory.named, provision) ---------------------------------------------

# Where `serve --model NAME` builds and keeps its model directories.
MASKRCNN_CACHE_DIR = "MASKRCNN_CACHE_DIR"
# Others' names that locate the caches: torch-hub's folder, and the user's cache folder.
TORCH_HOME = "TORCH_HOME"
XDG_CACHE_HOME = "XDG_CACHE_HOME"
HOME = "HOME"

# ---- others' ---------------------------------------------------------------------------------------------

# torch's override of its CPU kernel family (engine.torch_kernels follows it as torch does).
ATEN_CPU_CAPABILITY = "ATEN_CPU_CAPABILITY"

# ---- the GPU image's start script (docker/serve-gpu.sh, a shell script: listed here, read there) ----

# The TensorRT plans' precision: fp16, fp32, or off.
MASKRCNN_TENSORRT = "MASKRCNN_TENSORRT"
# Where the plans are built: a writable copy of the mounted model directory.
MASKRCNN_PLAN_CACHE = "MASKRCNN_PLAN_CACHE"
