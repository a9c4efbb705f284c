"""Runs the built images with podman and checks them as an EHR would (container-smoke.sh).

`single`: one container as the image's defaults run it (port 8080 published on loopback,
JWT authentication, SQLite): health, readiness, the healthcheck, non-root, no compiler,
discovery, one hook call with a card, a replayed token refused, metrics, then a graceful
stop (exit code 0).

`scale-out`: the containers of compose.yaml (two replicas, the HAProxy proxy) on the host
network, sharing a throwaway PostgreSQL: a token used at one replica is refused at the
other, feedback sent to both is stored once, calls through the proxy reach both replicas.

`kubernetes`: the production overlay's pod as podman can run it, read from the rendered
manifests (tests/support/kubernetes.py): its user, read-only root filesystem with only the
emptyDir writable, dropped capabilities, no privilege escalation, its settings ConfigMap and
the Secret's keys (a throwaway PostgreSQL); the init container `migrate`, then the service:
readiness, a hook call, /metrics on the metrics port only, no API docs, a graceful stop within
the grace period. Host networking, so the two ports are moved to free ones.

Run from the repository root: `python -m tests.support.container_checks single IMAGE`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
from cryptography.fernet import Fernet

from tests.support import kubernetes as k8s
from tests.support.jwt_tokens import TokenFactory, bearer
from tests.support.postgres import running_postgres, temporary_database

SERVICE = "fasciculation-pv"
MAGNESIUM_TOPIC = "hypomagnesemia"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], check=check, capture_output=True, text=True, timeout=120
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hook_request(patient_id: str = "p1") -> dict[str, Any]:
    """The README's example: a twitch complaint and a low magnesium."""

    def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in resources],
        }

    subject = {"reference": f"Patient/{patient_id}"}
    return {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "context": {"patientId": patient_id, "userId": "Practitioner/1"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": patient_id, "gender": "female"},
            "conditions": bundle(
                {
                    "resourceType": "Condition",
                    "id": "c1",
                    "subject": subject,
                    "clinicalStatus": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                "code": "active",
                            }
                        ]
                    },
                    "code": {
                        "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R25.3"}]
                    },
                }
            ),
            "observations": bundle(
                {
                    "resourceType": "Observation",
                    "id": "o1",
                    "status": "final",
                    "subject": subject,
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2601-3"}]},
                    "effectiveDateTime": time.strftime("%Y-%m-%d"),
                    "valueQuantity": {
                        "value": 0.58,
                        "unit": "mmol/L",
                        "system": "http://unitsofmeasure.org",
                        "code": "mmol/L",
                    },
                }
            ),
            "medicationRequests": bundle(),
            "medicationStatements": bundle(),
            "familyHistory": bundle(),
        },
    }


def feedback_body(card_uuid: str) -> dict[str, Any]:
    return {
        "feedback": [
            {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": "2026-11-29T10:00:00Z"}
        ]
    }


def wait_ready(base_url: str, container: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while (
        time.monotonic() < deadline
        and podman("inspect", "-f", "{{.State.Running}}", container).stdout.strip() == "true"
    ):
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    logs = podman("logs", container, check=False)
    raise AssertionError(f"{container} not ready: {logs.stdout[-3000:]}{logs.stderr[-3000:]}")


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)
    print(f"ok: {message}", flush=True)


@contextlib.contextmanager
def container(name: str, image: str, *args: str, command: tuple[str, ...] = ()) -> Iterator[str]:
    podman("run", "-d", "--name", name, *args, image, *command)
    try:
        yield name
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def check_card(response: httpx.Response) -> str:
    expect(response.status_code == 200, f"hook call answered {response.status_code}")
    cards = response.json()["cards"]
    topics = [card["source"]["topic"]["code"] for card in cards]
    expect(MAGNESIUM_TOPIC in topics, f"hook call returned the magnesium card ({topics})")
    return str(next(c["uuid"] for c in cards if c["source"]["topic"]["code"] == MAGNESIUM_TOPIC))


def single(image: str) -> None:
    tokens = TokenFactory()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    name = f"twitch-cds-smoke-{uuid.uuid4().hex[:8]}"
    env = [
        "-e",
        "TWITCH_CDS_AUTH=jwt",
        "-e",
        f"TWITCH_CDS_TRUSTED_ISSUERS={json.dumps(tokens.trusted_issuers())}",
        "-e",
        f"TWITCH_CDS_PUBLIC_BASE_URL={base}",
    ]
    with container(name, image, "-p", f"127.0.0.1:{port}:8080", *env):
        wait_ready(base, name)
        expect(httpx.get(f"{base}/health").json() == {"status": "ok"}, "GET /health")
        health = podman("healthcheck", "run", name, check=False)
        expect(health.returncode == 0, "the image's HEALTHCHECK passes")
        expect(podman("exec", name, "id", "-u").stdout.strip() == "10001", "runs as uid 10001")
        no_gcc = podman("exec", name, "sh", "-c", "command -v gcc cc", check=False)
        expect(no_gcc.returncode != 0, "no compiler in the final image")
        discovery = httpx.get(
            f"{base}/cds-services", headers=bearer(tokens.token(f"{base}/cds-services"))
        )
        ids = sorted(s["id"] for s in discovery.json()["services"])
        expect(discovery.status_code == 200 and len(ids) == 3, f"discovery lists {ids}")
        url = f"{base}/cds-services/{SERVICE}"
        token = tokens.token(url)
        check_card(httpx.post(url, json=hook_request(), headers=bearer(token)))
        replayed = httpx.post(url, json=hook_request(), headers=bearer(token))
        expect(replayed.status_code == 401, "a replayed token is refused")
        text = httpx.get(f"{base}/metrics").text
        expect(f'service="{SERVICE}",status="200"' in text, "/metrics counts the hook call")
        started = time.monotonic()
        podman("stop", "-t", "20", name)
        state = podman("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
        expect(
            state == "0",
            f"SIGTERM: graceful stop in {time.monotonic() - started:.1f} s, exit code {state}",
        )


def scale_out(image: str, proxy_image: str) -> None:
    tokens = TokenFactory()
    proxy_port, ports = free_port(), (free_port(), free_port())
    public = f"http://127.0.0.1:{proxy_port}"
    replicas = [f"http://127.0.0.1:{port}" for port in ports]
    run_id = uuid.uuid4().hex[:8]
    with (
        running_postgres() as server,
        temporary_database(server) as db_url,
        contextlib.ExitStack() as stack,
    ):
        names = []
        for index, port in enumerate(ports, start=1):
            names.append(
                stack.enter_context(
                    container(
                        f"twitch-cds-replica{index}-{run_id}",
                        image,
                        "--network",
                        "host",
                        "-e",
                        "TWITCH_CDS_HOST=127.0.0.1",
                        "-e",
                        f"TWITCH_CDS_PORT={port}",
                        "-e",
                        f"TWITCH_CDS_DATABASE_URL={db_url}",
                        "-e",
                        f"TWITCH_CDS_PUBLIC_BASE_URL={public}",
                        "-e",
                        "TWITCH_CDS_AUTH=jwt",
                        "-e",
                        f"TWITCH_CDS_TRUSTED_ISSUERS={json.dumps(tokens.trusted_issuers())}",
                    )
                )
            )
        proxy = stack.enter_context(
            container(
                f"twitch-cds-proxy-{run_id}",
                proxy_image,
                "--network",
                "host",
                "-e",
                f"TWITCH_CDS_PROXY_BIND=127.0.0.1:{proxy_port}",
                "-e",
                f"TWITCH_CDS_REPLICA_1=127.0.0.1:{ports[0]}",
                "-e",
                f"TWITCH_CDS_REPLICA_2=127.0.0.1:{ports[1]}",
            )
        )
        for base, name in zip(replicas, names, strict=True):
            wait_ready(base, name)
        wait_ready(public, proxy)
        url, path = f"{public}/cds-services/{SERVICE}", f"/cds-services/{SERVICE}"

        token = tokens.token(url)
        card = check_card(
            httpx.post(replicas[0] + path, json=hook_request(), headers=bearer(token))
        )
        replayed = httpx.post(replicas[1] + path, json=hook_request(), headers=bearer(token))
        expect(replayed.status_code == 401, "a token used at replica 1 is refused at replica 2")

        token = tokens.token(url)
        answers = [
            httpx.post(url, json=hook_request(), headers=bearer(token)).status_code
            for _ in range(2)
        ]
        expect(answers == [200, 401], f"through the proxy, the same token twice: {answers}")

        feedback_url = f"{public}{path}/feedback"
        stored = [
            httpx.post(
                base + path + "/feedback",
                json=feedback_body(card),
                headers=bearer(tokens.token(feedback_url)),
            ).json()["stored"]
            for base in replicas
        ]
        with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as connection:
            rows = connection.execute(
                "SELECT count(*) FROM feedback WHERE card_uuid = %s", (card,)
            ).fetchone()
        expect(
            stored == [1, 0] and rows == (1,),
            f"feedback sent to both replicas stored once (stored {stored}, rows {rows})",
        )

        served = {
            httpx.get(
                f"{public}/cds-services", headers=bearer(tokens.token(f"{public}/cds-services"))
            ).status_code
            for _ in range(4)
        }
        expect(served == {200}, "discovery through the proxy, round robin over both replicas")
        expect(
            httpx.get(f"{public}/metrics").status_code == 404, "the proxy does not publish /metrics"
        )
        # Each replica logged the hook calls it answered, refused replays included (a refused
        # call never reaches the `hook` record, so count the access records of the route).
        for name in names:
            calls = sum(
                record.get("event") == "request"
                and record.get("route") == path.replace(SERVICE, "{service_id}")
                for record in json_lines(podman("logs", name).stdout)
            )
            expect(calls >= 1, f"{name} answered {calls} hook call(s)")


def pod_options(pod: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """podman's options for what a pod spec says about one container's security and volumes."""
    security, pod_security = spec["securityContext"], pod["securityContext"]
    options = ["--user", f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}"]
    options += [f"--cap-drop={capability}" for capability in security["capabilities"]["drop"]]
    if security["allowPrivilegeEscalation"] is False:
        options += ["--security-opt", "no-new-privileges"]
    if security["readOnlyRootFilesystem"]:  # and no tmpfs of podman's own: only the emptyDirs
        options += ["--read-only", "--read-only-tmpfs=false"]
    empty_dirs = {v["name"]: v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v}
    for mount in spec.get("volumeMounts", []):
        size = empty_dirs[mount["name"]]["sizeLimit"].removesuffix("Mi")
        options += ["--tmpfs", f"{mount['mountPath']}:rw,size={size}m,mode=1777"]
    return options


def pod_environment(
    spec: dict[str, Any], settings: dict[str, str], secrets: dict[str, str]
) -> list[str]:
    """`-e` options: the ConfigMap's settings (envFrom), then the container's own variables."""
    values = dict(settings) if spec.get("envFrom") else {}
    for variable in spec.get("env", []):
        source = variable.get("valueFrom", {}).get("secretKeyRef")
        values[variable["name"]] = secrets[source["key"]] if source else variable["value"]
    return [option for name, value in values.items() for option in ("-e", f"{name}={value}")]


def kubernetes(image: str) -> None:
    objects = k8s.render("production")
    pod, settings = k8s.pod_spec(objects), dict(k8s.settings_data(objects))
    [init], main = pod["initContainers"], k8s.main_container(objects)
    tokens = TokenFactory()
    port, metrics_port = free_port(), free_port()
    base, run_id = f"http://127.0.0.1:{port}", uuid.uuid4().hex[:8]
    settings |= {
        "TWITCH_CDS_HOST": "127.0.0.1",  # host network: loopback, on free ports
        "TWITCH_CDS_PORT": str(port),
        "TWITCH_CDS_METRICS_PORT": str(metrics_port),
        "TWITCH_CDS_PUBLIC_BASE_URL": base,
    }
    with running_postgres() as server, temporary_database(server) as db_url:
        secrets = {
            "database-url": db_url,
            "trusted-issuers": json.dumps(tokens.trusted_issuers()),
            "app-session-key": Fernet.generate_key().decode(),
        }
        migrate = podman(
            "run",
            "--rm",
            "--network",
            "host",
            *pod_options(pod, init),
            *pod_environment(init, settings, secrets),
            image,
            *init["command"],
        )
        expect(
            "database schema at revision" in migrate.stdout,
            f"init container: {migrate.stdout.strip()}",
        )
        name = f"twitch-cds-pod-{run_id}"
        options = pod_options(pod, main) + pod_environment(main, settings, secrets)
        with container(name, image, "--network", "host", *options, command=main["command"]):
            wait_ready(base, name)
            written = podman("exec", name, "touch", "/app/written", check=False)
            expect(written.returncode != 0, "the root filesystem is read-only")
            url = f"{base}/cds-services/{SERVICE}"
            check_card(httpx.post(url, json=hook_request(), headers=bearer(tokens.token(url))))
            expect(
                httpx.get(f"{base}/metrics").status_code == 404, "no /metrics on the service port"
            )
            scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            expect(
                f'service="{SERVICE}",status="200"' in scrape,
                "the metrics port counts the hook call",
            )
            docs = [httpx.get(f"{base}{path}").status_code for path in ("/docs", "/openapi.json")]
            expect(docs == [404, 404], "no API docs in production")
            grace = pod["terminationGracePeriodSeconds"]
            started = time.monotonic()
            podman("stop", "-t", str(grace), name)
            state = podman("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
            expect(
                state == "0",
                f"SIGTERM: graceful stop in {time.monotonic() - started:.1f} s "
                f"(grace period {grace} s), exit code {state}",
            )


def json_lines(text: str) -> Iterator[dict[str, Any]]:
    """The JSON objects among a container's log lines (podman may add other lines)."""
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                yield record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["single", "scale-out", "kubernetes"])
    parser.add_argument("image")
    parser.add_argument("proxy_image", nargs="?")
    args = parser.parse_args(argv)
    if args.mode == "single":
        single(args.image)
    elif args.mode == "kubernetes":
        kubernetes(args.image)
    else:
        scale_out(args.image, args.proxy_image)


if __name__ == "__main__":
    main(sys.argv[1:])
