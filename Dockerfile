# Serving image for Amazon SageMaker (real-time and serverless endpoints, Batch Transform) and
# any Docker host. ONNX Runtime on the CPU; no PyTorch inside (build model directories
# elsewhere with `python build_engine.py --output DIR ...`). BuildKit is required (the default
# builder of Docker >= 23; with Debian's docker.io 20.10, set DOCKER_BUILDKIT=1).
#
#   docker build -t maskrcnn-serve .
#   docker run --rm -p 8080:8080 -v "$PWD/models/coco-v1:/opt/ml/model:ro" maskrcnn-serve serve
#   docker run --rm -p 8080:8080 maskrcnn-serve serve      # no model mounted: the bundled demo model
#
# Build arguments and secrets, all optional:
#   --build-arg BASE_IMAGE=...   any image with Python >= 3.10 and its venv module: the default
#                                official slim image, or a plain Debian one built from Debian
#                                packages alone by docker/base-image.sh (no registry needed).
#   --secret id=pip_ca,src=FILE  a CA bundle for pip, for builds behind a TLS-intercepting proxy.
#                                A BuildKit secret is mounted for one RUN step only: it is in no
#                                layer and no history of the image. Without it nothing changes.
# docker/build-image.sh does all of this for machines without registry access.
#
# SageMaker starts the container as `docker run IMAGE serve`, unpacks model.tar.gz into
# /opt/ml/model (read-only), may set SAGEMAKER_BIND_TO_PORT, and sends SIGTERM 30 s before
# SIGKILL. Neither $SM_MODEL_DIR nor an empty /opt/ml/model is baked in: `serve` would take
# either as the model directory and fail to start, where it can serve the demo model instead.
ARG BASE_IMAGE=python:3.11-slim

# Stage 1: the venv, built with pip. The sources and pip's work stay in this stage.
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# C and C++ compilers for the native libraries (engine/native: the RoIAlign, plain C, and
# torch's tie orders, C++; no Python headers needed), in this stage only: the serving image
# gets the built libraries, not the compilers. Debian-based images (the default and
# docker/base-image.sh's) take them from apt.
RUN if ! command -v gcc >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then \
        apt-get update -q \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc g++ libc6-dev \
        && rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/venv
WORKDIR /tmp/src
COPY pyproject.toml setup.py README.md build_engine.py ./
COPY engine/ engine/
COPY server/ server/
# `serve --model NAME` builds a named model on first use (it never imports torch itself)
COPY provision/ provision/
COPY exporter/ exporter/
COPY deploy/ deploy/
# The demo package: its trained model (demo/model) is package data; its training scripts
# import torch only when run, never on import of `demo`.
COPY demo/ demo/
# The base dependencies only: the `export` extra (torch, torchvision, onnx) stays out, and so
# does `deploy`'s boto3 (the deploy tool runs on a workstation, not in the endpoint).
# pip goes last: serving never runs it, and an image without it is smaller. The bytecode pip
# compiles stays: the unprivileged server could not write it, and would recompile every
# module at each start (a slower /ping after `docker run`, and on every serverless cold start).
RUN --mount=type=secret,id=pip_ca \
    set -e; \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    /opt/venv/bin/pip install .; \
    /opt/venv/bin/pip uninstall -q -y pip setuptools

# Stage 2: the serving image, the same base plus the venv.
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
# Checks that fail the build rather than the first start on SageMaker: no torch, the demo
# model is installed, the serving stack imports. Then the non-root user the server runs as.
RUN cd / \
    && python3 -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in the serving image'" \
    && python3 -c "from server.__main__ import bundled_model_dir as b; assert b(), 'demo/model not installed'" \
    && python3 -c "import engine, server.app, onnxruntime, openvino, cv2, falcon, waitress" \
    && python3 -c "from engine import roi_align; assert roi_align.available(), 'native RoIAlign not built'" \
    && python3 -c "from engine import torch_kernels; assert torch_kernels.available(), 'native torch_kernels not built'" \
    && python3 -c "from engine import int8_arithmetic as m; [m.saturates(r) for r in m.RUNTIMES]" \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin serve

USER 10001
WORKDIR /tmp
EXPOSE 8080
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
# Multi-model endpoints (SageMaker's model API, server/models.py) when SAGEMAKER_MULTI_MODEL=true.
LABEL com.amazonaws.sagemaker.capabilities.multi-models=true

# Exec form: the server is PID 1 and receives SIGTERM itself. `docker run IMAGE serve`
# passes "serve" as an argument, which the entry point accepts and ignores.
ENTRYPOINT ["serve"]
