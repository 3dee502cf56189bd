#!/usr/bin/env bash
# Install the project with its export and test extras into .venv and run the test suite; the
# arguments go to pytest. torch/torchvision are pinned to the versions this project is verified
# with (a CPU run is enough).
#   ./test.sh                    everything (what CI runs)
#   ./test.sh -m "not slow"      the quick loop: the pure unit tests (tiers: tests/tiers.py)
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e '.[export,test]'
exec .venv/bin/python -m pytest "$@"
