#!/usr/bin/env bash
# Run Label Studio 1.23.2 on this machine, set up for the SaG backend, in the foreground (Ctrl-C stops it).
#
#   bash scripts/label-studio.sh                  # start; prints the URL, the login and the API token
#   bash scripts/label-studio.sh --demo           # ... and create a demo project connected to the backend
#   bash scripts/label-studio.sh --demo --backend http://10.0.0.5:9090
#   bash scripts/label-studio.sh --install-only   # install into .venv-labelstudio and exit
#
# Label Studio pins rq/redis versions that conflict with ours, so it lives in its own virtual environment,
# .venv-labelstudio. It listens on 127.0.0.1 only, with what the backend needs:
#   - ML_BLOCK_LOCAL_IP=false, SSRF_PROTECTION_ENABLED=false: since 1.23.1 Label Studio refuses ML backends on
#     loopback and private addresses otherwise (and silently skips the backend's /webhook);
#   - a legacy API token (LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN) and a superuser, made on the first start;
#   - local-files serving from a document root (LOCAL_FILES_SERVING_ENABLED, LOCAL_FILES_DOCUMENT_ROOT): images
#     placed there are served by Label Studio itself at /data/local-files/?d=<path>, so the browser displays them
#     without any CORS set-up, and a backend on this machine reads them straight from disk;
#   - no telemetry: Sentry (SENTRY_DSN, FRONTEND_SENTRY_DSN), analytics (COLLECT_ANALYTICS), version check.
#
# Environment (all optional):
#   SAG_LS_PORT (8080), SAG_LS_DATA (./.label-studio: database, credentials.env, log), LOCAL_FILES_DOCUMENT_ROOT
#   ($SAG_LS_DATA/files), SAG_BACKEND_URL (http://127.0.0.1:9090, same as --backend), SAG_LS_VENV
#   (.venv-labelstudio), LABEL_STUDIO_USERNAME / LABEL_STUDIO_PASSWORD / LABEL_STUDIO_USER_TOKEN (the first start
#   generates and keeps them in $SAG_LS_DATA/credentials.env).
# The e2e suite (tests/e2e/conftest.py) starts Label Studio through this script, so this recipe is the tested one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DEMO=0
INSTALL_ONLY=0
BACKEND=${SAG_BACKEND_URL:-http://127.0.0.1:9090}
PORT=${SAG_LS_PORT:-8080}
while [ $# -gt 0 ]; do
    case "$1" in
        --demo) DEMO=1 ;;
        --backend) BACKEND=${2:?--backend needs a URL}; shift ;;
        --backend=*) BACKEND=${1#--backend=} ;;
        --port) PORT=${2:?--port needs a number}; shift ;;
        --port=*) PORT=${1#--port=} ;;
        --install-only) INSTALL_ONLY=1 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "label-studio.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

LS_VENV=${SAG_LS_VENV:-.venv-labelstudio}
if [ ! -x "$LS_VENV/bin/label-studio" ]; then
    echo "label-studio.sh: installing label-studio==1.23.2 into $LS_VENV (about 3 minutes, once)"
    python3 -m venv "$LS_VENV"
    "$LS_VENV/bin/python" -m pip install --quiet "label-studio==1.23.2"
fi
[ "$INSTALL_ONLY" = 1 ] && exit 0

DATA=$(python3 -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "${SAG_LS_DATA:-.label-studio}")
FILES=$(python3 -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "${LOCAL_FILES_DOCUMENT_ROOT:-$DATA/files}")
mkdir -p "$DATA" "$FILES"

# Credentials: the environment's, else the ones kept from the first start, else new random ones. Label Studio
# creates the user only once (an existing user keeps its password), so the first values are written down.
CREDENTIALS=$DATA/credentials.env
if [ -f "$CREDENTIALS" ]; then
    saved_user=$(sed -n 's/^LABEL_STUDIO_USERNAME=//p' "$CREDENTIALS")
    saved_password=$(sed -n 's/^LABEL_STUDIO_PASSWORD=//p' "$CREDENTIALS")
    saved_token=$(sed -n 's/^LABEL_STUDIO_USER_TOKEN=//p' "$CREDENTIALS")
fi
USER_EMAIL=${LABEL_STUDIO_USERNAME:-${saved_user:-admin@example.com}}
PASSWORD=${LABEL_STUDIO_PASSWORD:-${saved_password:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')}}
TOKEN=${LABEL_STUDIO_USER_TOKEN:-${saved_token:-$(python3 -c 'import secrets; print(secrets.token_hex(20))')}}
if [ ! -f "$CREDENTIALS" ]; then
    (umask 077; printf 'LABEL_STUDIO_USERNAME=%s\nLABEL_STUDIO_PASSWORD=%s\nLABEL_STUDIO_USER_TOKEN=%s\n' \
        "$USER_EMAIL" "$PASSWORD" "$TOKEN" > "$CREDENTIALS")
fi

# Label Studio moves to the next free port without a word when the port is taken; refuse instead, so the URL
# printed below is the one it serves.
if ! python3 - "$PORT" <<'EOF'
import socket, sys
with socket.socket() as s:
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError as exc:
        sys.exit(f"label-studio.sh: port {sys.argv[1]} is busy ({exc.strerror}); pass --port N or stop what uses it")
EOF
then
    exit 1
fi

URL="http://127.0.0.1:$PORT"
LOG=$DATA/label-studio.log
# Label Studio also reads the bare names USERNAME, PASSWORD, USER_TOKEN, HOST and PORT (get_env tries
# LABEL_STUDIO_<name>, HEARTEX_<name>, <name>): a shell's USERNAME or the backend's HOST must not leak in.
env -u USERNAME -u PASSWORD -u USER_TOKEN -u HOST -u PORT \
    LABEL_STUDIO_BASE_DATA_DIR="$DATA" \
    LABEL_STUDIO_USERNAME="$USER_EMAIL" LABEL_STUDIO_PASSWORD="$PASSWORD" LABEL_STUDIO_USER_TOKEN="$TOKEN" \
    LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
    ML_BLOCK_LOCAL_IP=false SSRF_PROTECTION_ENABLED=false \
    LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT="$FILES" \
    SENTRY_DSN="" FRONTEND_SENTRY_DSN="" COLLECT_ANALYTICS=false LATEST_VERSION_CHECK=false \
    "$LS_VENV/bin/label-studio" start --no-browser --port "$PORT" --internal-host 127.0.0.1 >"$LOG" 2>&1 &
LS_PID=$!
stop_label_studio() {
    if kill -0 "$LS_PID" 2>/dev/null; then
        kill -TERM "$LS_PID" 2>/dev/null || true
        wait "$LS_PID" 2>/dev/null || true
    fi
}
trap stop_label_studio EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_http URL SECONDS [PID]: until URL answers 200; fails early when PID (the server) has exited.
wait_http() {
    python3 - "$@" <<'EOF'
import os, sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
pid = int(sys.argv[3]) if len(sys.argv) > 3 else None
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    if pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(3)
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(1)
sys.exit(4)
EOF
}

echo "label-studio.sh: starting Label Studio on $URL (the first start migrates its database: about a minute; log: $LOG)"
if ! wait_http "$URL/health" 900 "$LS_PID"; then
    echo "label-studio.sh: Label Studio did not come up; the end of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
fi
cat <<EOF

  Label Studio  $URL
  login         $USER_EMAIL / $PASSWORD
  API token     $TOKEN   (legacy token: Authorization: Token ...)
  local files   $FILES   (served at /data/local-files/?d=<path under it>)
  credentials   $CREDENTIALS

EOF

if [ "$DEMO" = 1 ]; then
    echo "label-studio.sh: --demo: waiting for the backend at $BACKEND (start it with: bash scripts/run-backend.sh)"
    if ! wait_http "$BACKEND/health" 1800; then
        echo "label-studio.sh: no backend answered at $BACKEND/health; start it, or pass --backend URL" >&2
        exit 1
    fi
    [ -x .venv/bin/python ] || bash scripts/bootstrap.sh  # the demo's photos come from scikit-image in .venv
    if ! .venv/bin/python scripts/label_studio_demo.py --url "$URL" --token "$TOKEN" --backend "$BACKEND" \
            --document-root "$FILES"; then
        echo "label-studio.sh: the demo did not complete (see above); Label Studio keeps running" >&2
    fi
fi

cat <<EOF
For Start Training and bulk write-back the backend needs this Label Studio's URL and token:
  LABEL_STUDIO_URL=$URL LABEL_STUDIO_API_KEY=$TOKEN bash scripts/run-backend.sh
Label Studio runs until Ctrl-C.
EOF
wait "$LS_PID"
