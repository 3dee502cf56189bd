#!/usr/bin/env bash
# Set up a virtual environment (first run only) and start the server on port 8080.
# Arguments go to `serve` (e.g. --model-dir DIR --port 9000). Torch is not installed: serving never needs it.
#   ./serve.sh           the bundled demo model (circles, squares and triangles), offline
#   ./serve.sh --coco    torchvision's COCO Mask R-CNN (= serve --model coco-v1): the first run
#                        installs torch into .venv, fetches the weights and builds the model
#                        under ~/.cache/maskrcnn-serve; later runs reuse it
set -euo pipefail
cd "$(dirname "$0")"
# Installed again when pyproject.toml is newer than the install (a new package to map, say).
if [ ! -x .venv/bin/serve ] || [ pyproject.toml -nt .venv/bin/serve ]; then
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  .venv/bin/pip install -q -e .
fi
exec .venv/bin/serve "$@"
