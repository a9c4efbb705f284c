#!/usr/bin/env bash
# Quickstart 1: set up and run the service on 127.0.0.1:8000 (SQLite, no authentication).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
# The assessment app's form renderer (LHC-Forms, app/package.json), once; the container image
# copies it at build time instead. Without npm the service runs and /app/ says what is missing.
if [ ! -d app/node_modules/lforms ] && command -v npm >/dev/null 2>&1; then
  echo "run: installing the assessment app's LHC-Forms (npm ci in app/, first run only)"
  npm ci --prefix app --no-audit --no-fund --loglevel=error
fi
export TWITCH_CDS_AUTH="${TWITCH_CDS_AUTH:-none}"
exec .venv/bin/twitch-cds serve --host 127.0.0.1 --port 8000 "$@"
