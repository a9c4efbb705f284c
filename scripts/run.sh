#!/usr/bin/env bash
# Quickstart 1: set up and run the service on 127.0.0.1:8000 (SQLite, no authentication).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
export TWITCH_CDS_AUTH="${TWITCH_CDS_AUTH:-none}"
exec .venv/bin/twitch-cds serve --host 127.0.0.1 --port 8000 "$@"
