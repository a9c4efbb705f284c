#!/usr/bin/env bash
# Try twitch-cds in the CDS Hooks sandbox: sets up .venv, then `twitch-cds demo` starts the
# service (JWT, trusting the sandbox) on 127.0.0.1:8000 and the FHIR R4 server with the demo
# patients on 127.0.0.1:8081, and prints a sandbox link and a curl line per patient.
# Needs node and npm (the FHIR server's packages are installed on first run). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec .venv/bin/twitch-cds demo "$@"
