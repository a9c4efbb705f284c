"""The container image builds here and serves (scripts/container-smoke.sh), alone, as
compose.yaml's scale-out (two replicas behind the proxy on one PostgreSQL), and as the
Kubernetes production overlay's pod (read-only root filesystem, no capabilities).

Needs podman and debootstrap (scripts/install-test-deps.sh installs them on Debian) and root;
skipped without them. The first run makes the base image and builds (~3 min); later runs
reuse podman's layer cache (~10 s to build).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cds.settings import Settings
from tests.support.postgres import PostgresBinariesNotFound, find_postgres_bindir

ROOT = Path(__file__).resolve().parents[1]
needs_podman = pytest.mark.skipif(
    shutil.which("podman") is None or os.geteuid() != 0,
    reason="needs podman, as root (scripts/install-test-deps.sh installs it)",
)


def smoke(*args: str) -> str:
    result = subprocess.run(
        ["bash", "scripts/container-smoke.sh", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    print(result.stdout)
    return result.stdout


@needs_podman
def test_image_builds_runs_answers_and_stops_gracefully() -> None:
    output = smoke()
    for check in (
        "runs as uid 10001",
        "no compiler in the final image",
        "the image's HEALTHCHECK passes",
        "hook call returned the magnesium card",
        "a replayed token is refused",
        "SIGTERM: graceful stop",
    ):
        assert f"ok: {check}" in output, output


@needs_podman
def test_scale_out_replicas_share_replay_cache_and_feedback() -> None:
    try:
        find_postgres_bindir()
    except PostgresBinariesNotFound:
        pytest.skip("needs the PostgreSQL server binaries")
    output = smoke("--scale-out")
    for check in (
        "a token used at replica 1 is refused at replica 2",
        "through the proxy, the same token twice: [200, 401]",
        "feedback sent to both replicas stored once",
    ):
        assert f"ok: {check}" in output, output


@needs_podman
def test_the_kubernetes_pod_spec_runs_the_image() -> None:
    """What the manifests' validation cannot show: that the image works under the pod's
    security context (read-only root, only the emptyDir writable, no capabilities, uid 10001)
    with the overlay's settings, its init container and its metrics port."""
    try:
        find_postgres_bindir()
    except PostgresBinariesNotFound:
        pytest.skip("needs the PostgreSQL server binaries")
    output = smoke("--kubernetes")
    for check in (
        "init container: twitch-cds migrate: database schema at revision",
        "the root filesystem is read-only",
        "hook call returned the magnesium card",
        "no /metrics on the service port",
        "the metrics port counts the hook call",
        "no API docs in production",
        "SIGTERM: graceful stop",
    ):
        assert f"ok: {check}" in output, output


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = str(Path(sys.executable).parent / "hadolint")
    for dockerfile in ("Dockerfile", "deploy/proxy/Dockerfile"):
        result = subprocess.run([hadolint, dockerfile], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_compose_replicas_share_the_database_and_the_proxy_names_them() -> None:
    """compose.yaml as an integration engineer reads it: two identical replicas on one
    PostgreSQL, the proxy pointing at both, and only variables the service knows."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    replicas = [services["cds-1"], services["cds-2"]]
    assert replicas[0] == replicas[1]
    environment = replicas[0]["environment"]
    assert environment["TWITCH_CDS_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in environment["TWITCH_CDS_DATABASE_URL"]
    assert replicas[0]["depends_on"]["postgres"]["condition"] == "service_healthy"
    known = {f"TWITCH_CDS_{name.upper()}" for name in Settings.model_fields} | {
        f"TWITCH_CDS_{name}" for name in ("HOST", "PORT", "WORKERS")
    }
    assert set(environment) <= known
    proxy = services["proxy"]["environment"]
    assert {proxy["TWITCH_CDS_REPLICA_1"], proxy["TWITCH_CDS_REPLICA_2"]} == {
        "cds-1:8080",
        "cds-2:8080",
    }
    config = (ROOT / "deploy/proxy/haproxy.cfg").read_text()
    assert '"${TWITCH_CDS_REPLICA_1}"' in config and '"${TWITCH_CDS_REPLICA_2}"' in config
    assert "uri /ready" in config
