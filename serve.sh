#!/usr/bin/env bash
# Set up a virtual environment (first run only) and start the server on port 8080.
# Arguments go to `serve` (e.g. --model-dir DIR --port 9000). Torch is not installed: serving never needs it.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/serve ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e .
fi
exec .venv/bin/serve "$@"
