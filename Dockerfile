# Serving image for Amazon SageMaker real-time endpoints (and any Docker host).
# Runs ONNX Runtime on the CPU; no PyTorch inside (build model directories elsewhere with
# `python build_engine.py --output DIR ...`).
#
#   docker build -t maskrcnn-serve .
#   docker run --rm -p 8080:8080 -v "$PWD/models/coco-v1:/opt/ml/model:ro" maskrcnn-serve serve
#   docker run --rm -p 8080:8080 maskrcnn-serve serve      # no model mounted: the bundled demo model
#
# SageMaker starts the container as `docker run IMAGE serve`, unpacks model.tar.gz into
# /opt/ml/model, may set SAGEMAKER_BIND_TO_PORT, and sends SIGTERM 30 s before SIGKILL.
# Neither $SM_MODEL_DIR nor an empty /opt/ml/model is baked in: `serve` would take either
# as the model directory and fail to start, where it can serve the demo model instead.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libgomp1: OpenMP runtime some numerical wheels load at import time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/program
COPY pyproject.toml README.md build_engine.py ./
COPY engine/ engine/
COPY server/ server/
COPY exporter/ exporter/
# The demo package: its trained model (demo/model) is package data; its training scripts
# import torch only when run, never on import of `demo`.
COPY demo/ demo/
# The base dependencies only: the `export` extra (torch, torchvision, onnx) stays out.
RUN pip install . \
    && python -c "import importlib.util as u, server; assert u.find_spec('torch') is None, 'torch in the serving image'" \
    && (cd / && python -c "from server.__main__ import bundled_model_dir as b; assert b(), 'demo/model not installed'") \
    && useradd --system --uid 10001 --no-create-home serve

USER serve
EXPOSE 8080
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true

# Exec form: the server is PID 1 and receives SIGTERM itself. `docker run IMAGE serve`
# passes "serve" as an argument, which the entry point accepts and ignores.
ENTRYPOINT ["serve"]
