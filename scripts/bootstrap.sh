#!/usr/bin/env bash
# Creates .venv (Python 3.11 or 3.12: durable-rules does not import on 3.13) and installs the
# project into it, again only when pyproject.toml changed. Sourced by run.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pick_python() {
  for candidate in python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))' \
         2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "twitch-cds needs Python 3.11 or 3.12 (durable-rules does not import on 3.13)" >&2
  return 1
}

extras="${1:-}"
stamp=".venv/.installed${extras:+-$extras}"
if [ ! -x .venv/bin/python ]; then
  "$(pick_python)" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
