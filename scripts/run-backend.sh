#!/usr/bin/env bash
# Run the Label Studio ML backend on a fresh machine: install into .venv (scripts/bootstrap.sh), then serve on
# port 9090 in embedded mode (jobs run in-process, no Redis). The first start creates an initial, untrained model
# version in ./models. Override any variable of docs/configuration.md, e.g. PORT=9191.
# LOCAL_FILES_DOCUMENT_ROOT defaults to the folder scripts/label-studio.sh serves local files from, so the backend
# reads the demo's /data/local-files/ images straight from disk, without Label Studio's URL or token.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export SAG_MODEL_DIR="${SAG_MODEL_DIR:-$PWD/models}"
export PORT="${PORT:-9090}"
export LOCAL_FILES_DOCUMENT_ROOT="${LOCAL_FILES_DOCUMENT_ROOT:-$PWD/.label-studio/files}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
unset REDIS_URL
exec .venv/bin/sag-backend "$@"
