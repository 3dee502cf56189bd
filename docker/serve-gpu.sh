#!/bin/sh
# Entry point of Dockerfile.gpu: build TensorRT plans for the mounted model on this GPU (once;
# plans are GPU- and TensorRT-specific), then exec the server so that it receives SIGTERM.
#
# SageMaker mounts the model read-only at /opt/ml/model, so the plans go to a writable copy
# ($MASKRCNN_PLAN_CACHE, default /tmp/maskrcnn-model: model.json copied, graphs symlinked).
# A copy made earlier from the same graphs is reused when its plans fit this GPU.
# MASKRCNN_TENSORRT=fp16 (default) | fp32 | off. If the build fails, the server starts anyway
# on the model as mounted: backend auto then takes onnxruntime-cuda.
set -eu
if [ "${1:-}" = "serve" ]; then shift; fi
source_dir="${SM_MODEL_DIR:-/opt/ml/model}"
precision="${MASKRCNN_TENSORRT:-fp16}"
cache="${MASKRCNN_PLAN_CACHE:-/tmp/maskrcnn-model}"
if [ "$precision" != "off" ] && [ -f "$source_dir/model.json" ]; then
    if python -m build_engine --tensorrt "--$precision" --from-model-dir "$source_dir" \
            --output "$cache" --if-missing --slots "${SAGEMAKER_MODEL_SERVER_WORKERS:-2}"; then
        exec serve --model-dir "$cache" "$@"
    fi
    echo "serve-gpu: TensorRT plans could not be built; serving $source_dir with the next backend" >&2
fi
exec serve "$@"
