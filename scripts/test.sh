#!/usr/bin/env bash
# Install (if needed) and run the test suite. Extra arguments go to pytest, e.g. scripts/test.sh -k fusion
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
