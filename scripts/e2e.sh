#!/usr/bin/env bash
# End-to-end suite with a real Label Studio 1.23.2 (about 2 minutes on 2 cores; the first run installs Label Studio
# and Chromium, about 3 minutes more). Label Studio pins rq/redis versions that conflict with ours, so it gets its own virtual
# environment, .venv-labelstudio, with Playwright for the screenshot; Chromium comes from Debian.
# Label Studio is started by scripts/label-studio.sh, the recipe users run. Screenshots of the labelling UI land in
# runs/e2e/ (labeling-ui.png, demo-task.png). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
LS_VENV=.venv-labelstudio
bash scripts/label-studio.sh --install-only  # the same install the suite's Label Studio is started by
if ! "$LS_VENV/bin/python" -c "import playwright" 2>/dev/null; then
    echo "e2e: installing playwright into $LS_VENV (the labelling-UI screenshots)"
    "$LS_VENV/bin/python" -m pip install --quiet playwright
fi
if ! command -v chromium >/dev/null 2>&1; then
    echo "e2e: installing Chromium (Debian package) for the labelling-UI screenshot"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
export SAG_E2E=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -m e2e tests/e2e -v "$@"
