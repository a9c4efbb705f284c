#!/usr/bin/env bash
# Quickstart 2: set up and run the whole test suite, with its code-quality gates (ruff lint,
# ruff format, mypy on cds/, the package layout's import rules). Installs what the tests
# need: the Python test extras, PostgreSQL server binaries and Chromium (Debian). The suite itself
# runs `npm ci` for the FHIR test server and the browser driver when needed, and starts and stops
# the servers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh test
bash scripts/install-test-deps.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# The import rules of the package layout ([tool.importlinter] in pyproject.toml).
.venv/bin/lint-imports
# pytest exits 5 when it collected no test: with `set -e` that fails the run, as it must.
exec .venv/bin/python -m pytest "$@"
