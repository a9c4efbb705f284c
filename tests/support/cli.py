"""`twitch-cds` as a user runs it: its own process, from the repository, with its settings
taken from the environment."""

from __future__ import annotations

import os
import subprocess
import sys

from cds.settings import PROJECT_ROOT


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`twitch-cds ARGV...` with `env` added to the environment: exit status, stdout, stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "cds.tools.cli", *argv],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    return result.returncode, result.stdout, result.stderr
