"""`twitch-cds demo`: the tester's path into the CDS Hooks sandbox, in one command.

Starts, on loopback, the local FHIR R4 server the test suite uses (Medplum's engine,
`tests/fhir_server/server.mjs`, with CORS and Private Network Access so that a browser EHR on
another origin can read it) and the service with real JWT verification: it trusts the public
CDS Hooks sandbox (`https://sandbox.cds-hooks.org`, through the JWKS shipped in the repository)
and a key made for this run, with which the printed curl lines are signed. It loads the demo
patients of `demo/` (dates resolved against today, so labs are never stale) and prints, per
patient, the sandbox URL that opens it with the right settings and a curl line. Ctrl-C stops
both servers.

The terminal is the tester's: each step says what it is doing (the first run installs the FHIR
server's Node.js packages, about a minute of otherwise silent work), the curl lines carry a
token (the service verifies JWTs, so a plain curl gets 401) and pretty-print the answer, and
the service's request logs go to a file named on screen, so the link list stays readable.

Paths are those of the checkout the package runs from (like `rules/`): the demo needs the
repository's `demo/`, `tests/fhir_server/` and `tests/fixtures/sandbox/`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from cds.settings import PROJECT_ROOT
from cds.web.auth import MAX_TOKEN_LIFETIME_SECONDS

DEMO_DIR = PROJECT_ROOT / "demo"
FHIR_SERVER_DIR = PROJECT_ROOT / "tests" / "fhir_server"
# LHC-Forms for the assessment app (/app/); the image copies it at build time instead.
APP_ASSETS_DIR = PROJECT_ROOT / "app"
SANDBOX_JWKS = PROJECT_ROOT / "tests" / "fixtures" / "sandbox" / "sandbox-jwks.json"
SANDBOX_URL = "https://sandbox.cds-hooks.org/"
SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
CURL_ISSUER = "twitch-cds-demo"
CURL_KID = "twitch-cds-demo-1"
# The longest a token may live (CDS Hooks: exp at most five minutes ahead).
CURL_TOKEN_SECONDS = MAX_TOKEN_LIFETIME_SECONDS
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
# The sandbox's "screen" for each hook (its query parameters `hook` and `screen`).
SANDBOX_SCREENS = {
    "patient-view": "patient-view",
    "order-select": "rx-view",
    "order-sign": "rx-sign",
}
_DATE_TOKEN = re.compile(r"\{\{today - (\d+) days\}\}")
_LISTENING = re.compile(r"^listening (http://\S+)$", re.MULTILINE)


class DemoError(RuntimeError):
    """The demo could not be set up (missing checkout files, node, a busy port...)."""


# -- the demo patients ------------------------------------------------------------------


@dataclass(frozen=True)
class DemoPatient:
    """One demo patient: its transaction Bundle and what each hook should show for it."""

    patient_id: str
    title: str
    shows: str
    bundle_path: Path
    cards: dict[str, list[str]]  # hook -> source.topic codes that must be shown
    exact: bool = False  # no other card may be shown
    absent: list[str] = field(default_factory=list)  # codes that must not be shown
    draft_order: dict[str, Any] | None = None  # medicationCodeableConcept of the order hooks

    @property
    def hooks(self) -> list[str]:
        return list(self.cards)

    def bundle(self, today: date) -> dict[str, Any]:
        """The transaction Bundle with every `{{today - N days}}` resolved against `today`."""
        resolved: dict[str, Any] = resolve_dates(json.loads(self.bundle_path.read_text()), today)
        return resolved


def load_patients(demo_dir: Path = DEMO_DIR) -> list[DemoPatient]:
    """The patients of `demo/patients.yaml`, each with the id of its bundle's Patient."""
    manifest = demo_dir / "patients.yaml"
    if not manifest.is_file():
        raise DemoError(f"{manifest} not found: run the demo from a twitch-cds checkout")
    patients = []
    for item in yaml.safe_load(manifest.read_text())["patients"]:
        path = demo_dir / "patients" / item["file"]
        bundle = json.loads(path.read_text())
        ids = [
            e["resource"]["id"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Patient"
        ]
        if len(ids) != 1:
            raise DemoError(f"{path}: expected exactly one Patient, found {len(ids)}")
        patients.append(
            DemoPatient(
                patient_id=ids[0],
                title=item["title"],
                shows=item["shows"],
                bundle_path=path,
                cards={hook: list(codes) for hook, codes in item["cards"].items()},
                exact=bool(item.get("exact", False)),
                absent=list(item.get("absent", [])),
                draft_order=item.get("draft_order"),
            )
        )
    return patients


def resolve_dates(value: Any, today: date) -> Any:
    """Replaces `{{today - N days}}` in every string of a JSON value with an ISO date."""
    if isinstance(value, str):
        return _DATE_TOKEN.sub(lambda m: (today - timedelta(days=int(m[1]))).isoformat(), value)
    if isinstance(value, list):
        return [resolve_dates(item, today) for item in value]
    if isinstance(value, dict):
        return {key: resolve_dates(item, today) for key, item in value.items()}
    return value


def draft_medication_request(patient: DemoPatient, today: date) -> dict[str, Any]:
    """The draft order an EHR's prescribing screen holds once the clinician picked the drug."""
    return {
        "resourceType": "MedicationRequest",
        "id": f"draft-{patient.patient_id}",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient.patient_id}"},
        "authoredOn": today.isoformat(),
        "medicationCodeableConcept": patient.draft_order,
        "dosageInstruction": [{"text": "1 tablet by mouth once daily"}],
    }


def hook_context(patient: DemoPatient, hook: str, today: date) -> dict[str, Any]:
    """The hook's `context` as an EHR sends it (order hooks carry the draft order)."""
    context: dict[str, Any] = {"patientId": patient.patient_id, "userId": "Practitioner/demo"}
    if hook in ("order-select", "order-sign"):
        draft = draft_medication_request(patient, today)
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft}],
        }
        if hook == "order-select":
            context["selections"] = [f"MedicationRequest/{draft['id']}"]
    return context


def sandbox_link(discovery_url: str, fhir_url: str, patient_id: str, hook: str) -> str:
    """The public sandbox, opened on this service, FHIR server, patient and hook's screen.

    Parameter names as the sandbox reads them (cds-hooks/sandbox, MainView):
    `serviceDiscoveryURL`, `fhirServiceUrl`, `patientId`, `hook`, `screen`.
    """
    query = {
        "serviceDiscoveryURL": discovery_url,
        "fhirServiceUrl": fhir_url,
        "patientId": patient_id,
        "hook": hook,
        "screen": SANDBOX_SCREENS[hook],
    }
    return f"{SANDBOX_URL}?{urlencode(query)}"


# -- JWTs for the curl lines ------------------------------------------------------------


@dataclass
class CurlSigner:
    """An ES384 key made for one demo run, trusted by the service, signing the curl tokens."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )

    @property
    def jwks(self) -> dict[str, Any]:
        public = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": CURL_KID, "use": "sig", "alg": "ES384"}]}

    def token(self, url: str) -> str:
        """A single-use token for `url` (the service remembers its `jti`)."""
        now = int(time.time())
        claims = {
            "iss": CURL_ISSUER,
            "aud": url,
            "iat": now,
            "exp": now + CURL_TOKEN_SECONDS,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(
            claims, self.key, algorithm="ES384", headers={"kid": CURL_KID, "typ": "JWT"}
        )


def trusted_issuers(signer: CurlSigner, existing: str | None) -> str:
    """`TWITCH_CDS_TRUSTED_ISSUERS` for the demo: the caller's issuers (if any), the sandbox
    through the shipped JWKS file, and this run's curl key."""
    issuers: dict[str, Any] = json.loads(existing) if existing else {}
    issuers[SANDBOX_ISSUER] = {"jwks_file": str(SANDBOX_JWKS)}
    issuers[CURL_ISSUER] = {"jwks": signer.jwks}
    return json.dumps(issuers)


# Pretty-prints a curl line's JSON answer; Python is on the tester's machine (it runs the demo).
PRETTY = "python3 -m json.tool"


def curl_line(service_url: str, token: str, body: dict[str, Any] | None = None) -> str:
    """A shell line: curl with the token (and the JSON body of a hook call), its answer
    pretty-printed."""
    command = (
        f"curl -s {shlex.quote(service_url)} -H {shlex.quote('Authorization: Bearer ' + token)}"
    )
    if body is not None:
        command += (
            " -H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(body, separators=(',', ':')))}"
        )
    return f"{command} | {PRETTY}"


def say(message: str) -> None:
    """One step of the start-up, as it happens."""
    print(f"twitch-cds demo: {message}", flush=True)


# -- the local FHIR server --------------------------------------------------------------


def node_command() -> list[str]:
    """The node invocation for this machine.

    The Medplum 5.x packages target Node >= 22.18, where ``WebSocket`` is a global. On older
    Node, ``@medplum/core`` fails at import with "WebSocket is not defined" unless the
    experimental global is switched on.
    """
    try:
        version = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as error:
        raise DemoError("node is needed for the local FHIR server (Debian: nodejs, npm)") from error
    major = int(version.lstrip("v").split(".")[0])
    return ["node", "--experimental-websocket"] if major < 22 else ["node"]


def ensure_node_modules(server_dir: Path = FHIR_SERVER_DIR) -> None:
    """Run ``npm ci`` only if node_modules is missing or older than package-lock.json.

    npm writes ``node_modules/.package-lock.json`` last, so its mtime says when the install
    finished. A file lock keeps parallel processes from installing at the same time.
    """
    lockfile = server_dir / "package-lock.json"
    installed = server_dir / "node_modules" / ".package-lock.json"

    def up_to_date() -> bool:
        return installed.exists() and installed.stat().st_mtime >= lockfile.stat().st_mtime

    if up_to_date():
        return
    lock_path = Path(tempfile.gettempdir()) / f"twitch-cds-npm-{server_dir.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if up_to_date():  # another process installed while we waited
            return
        say(
            "installing the local FHIR server's Node.js packages (Medplum's FHIR engine: "
            f"npm ci in {server_dir}); first run only, about a minute..."
        )
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=server_dir,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise DemoError(f"npm ci failed in {server_dir}:\n{result.stderr}")


def wait_for_fhir_server(
    process: subprocess.Popen[bytes], log_path: Path, timeout: float = 30.0
) -> str:
    """The base URL the node server printed, once its /healthz answers."""
    deadline = time.monotonic() + timeout
    base_url = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(
                f"FHIR server exited with {process.returncode}:\n"
                f"{log_path.read_text(errors='replace')}"
            )
        if base_url is None and (match := _LISTENING.search(log_path.read_text())):
            base_url = match.group(1)
        if base_url is not None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                    return base_url
        time.sleep(0.1)
    raise DemoError(f"FHIR server not ready after {timeout}s:\n{log_path.read_text()}")


def load_bundle(fhir_url: str, bundle: dict[str, Any]) -> None:
    response = httpx.post(
        f"{fhir_url}/", json=bundle, timeout=60.0, headers={"Content-Type": "application/fhir+json"}
    )
    if response.status_code != 200:
        raise DemoError(
            f"loading a demo bundle failed ({response.status_code}): {response.text[:500]}"
        )


# -- running both servers ---------------------------------------------------------------


@dataclass
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    fhir_port: int = 8081
    # Where the service's request logs go (named on screen); default in the temp directory.
    log_file: Path | None = None

    @property
    def service_log(self) -> Path:
        return self.log_file or Path(tempfile.gettempdir()) / f"twitch-cds-demo-{self.port}.log"


def loopback(host: str) -> str:
    """The host, if it is an IPv4 loopback address: the demo's FHIR server is open, no auth."""
    try:
        is_loopback = host == "localhost" or ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise DemoError(f"--host {host}: the demo binds only to loopback addresses")
    return host


def stop_process(process: subprocess.Popen[Any], timeout: float = 15) -> None:
    """SIGTERM our own child, wait, then SIGKILL if it does not go."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def wait_for_service(
    process: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise DemoError(
                f"the service exited with {process.returncode} (log: {log_path}):\n{tail}"
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise DemoError(f"the service did not answer at {url} within {timeout}s")


def discover_services(base_url: str, signer: CurlSigner) -> dict[str, str]:
    """hook -> service id, read from the running service's discovery (JWT-verified)."""
    url = f"{base_url}/cds-services"
    response = httpx.get(
        url, headers={"Authorization": f"Bearer {signer.token(url)}"}, timeout=10.0
    )
    response.raise_for_status()
    return {service["hook"]: service["id"] for service in response.json()["services"]}


def describe(
    patients: list[DemoPatient],
    base_url: str,
    fhir_url: str,
    services: dict[str, str],
    signer: CurlSigner,
    today: date,
    log_path: Path,
) -> str:
    """The text printed once both servers run: where the request logs go, a discovery curl
    line, and per patient, sandbox links and curl lines."""
    discovery = f"{base_url}/cds-services"
    lines = [
        "",
        "twitch-cds demo is running (Ctrl-C stops both servers).",
        f"  CDS service:  {discovery}   (JWT: trusts {SANDBOX_ISSUER} and this run's curl key)",
        f"  FHIR server:  {fhir_url}   (R4, open, CORS for any origin)",
        f"  Request logs: {log_path}   (tail -f it to watch the calls)",
        f"  Discovery:    {curl_line(discovery, signer.token(discovery))}",
        "",
    ]
    for number, patient in enumerate(patients, 1):
        lines.append(f"{number}. {patient.title}  [patientId {patient.patient_id}]")
        lines += textwrap.wrap(
            patient.shows, width=96, initial_indent="   ", subsequent_indent="   "
        )
        for hook, codes in patient.cards.items():
            expected = ", ".join(codes) if codes else "no cards"
            lines.append(f"   {hook}: expect {expected}")
            link = sandbox_link(discovery, fhir_url, patient.patient_id, hook)
            service_url = f"{discovery}/{services[hook]}"
            body = {
                "hookInstance": str(uuid.uuid4()),
                "hook": hook,
                "fhirServer": fhir_url,
                "context": hook_context(patient, hook, today),
            }
            curl = curl_line(service_url, signer.token(service_url), body)
            lines += [f"     sandbox: {link}", f"     curl:    {curl}"]
        lines.append("")
    lines.append(
        f"Each curl line works once, within {CURL_TOKEN_SECONDS // 60} minutes "
        "(the service refuses a replayed or expired JWT); a plain curl without the token "
        "gets 401."
    )
    return "\n".join(lines)


@contextlib.contextmanager
def child_process(
    command: list[str], log_path: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process writing its output to `log_path`, stopped on the way out."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process)


@contextlib.contextmanager
def running_fhir_server(
    options: DemoOptions, workdir: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The node FHIR server as a child process (its output in `workdir`), and its base URL."""
    ensure_node_modules()
    ensure_node_modules(APP_ASSETS_DIR)
    log_path = workdir / "fhir-server.log"
    command = [
        *node_command(),
        "server.mjs",
        "--host",
        options.host,
        "--port",
        str(options.fhir_port),
    ]
    with child_process(command, log_path, cwd=FHIR_SERVER_DIR) as process:
        yield wait_for_fhir_server(process, log_path), process


@contextlib.contextmanager
def running_service(
    options: DemoOptions, signer: CurlSigner
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`twitch-cds serve` as a child process (its JSON log lines in `options.service_log`),
    and its URL."""
    env = {
        **os.environ,
        "TWITCH_CDS_AUTH": "jwt",
        "TWITCH_CDS_TRUSTED_ISSUERS": trusted_issuers(
            signer, os.environ.get("TWITCH_CDS_TRUSTED_ISSUERS")
        ),
    }
    base_url = f"http://{options.host}:{options.port}"
    # The sandbox and the curl lines call this very URL: it is every token's audience.
    env["TWITCH_CDS_PUBLIC_BASE_URL"] = base_url
    log_path = options.service_log
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "cds.tools.cli", "serve"]
    command += ["--host", options.host, "--port", str(options.port)]
    with child_process(command, log_path, env=env) as process:
        wait_for_service(process, base_url, log_path)
        yield base_url, process


def run(options: DemoOptions) -> None:
    """Start both servers, load the patients, print how to reach them; run until Ctrl-C."""
    patients = load_patients()
    today = date.today()
    signer = CurlSigner()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="twitch-cds-demo-")))
        say("starting the local FHIR server (R4, loopback only)...")
        fhir_url, fhir = stack.enter_context(running_fhir_server(options, workdir))
        say(f"starting twitch-cds with JWT verification; request logs: {options.service_log}")
        base_url, service = stack.enter_context(running_service(options, signer))
        say(f"loading {len(patients)} demo patients into the FHIR server...")
        for patient in patients:
            load_bundle(fhir_url, patient.bundle(today))
        services = discover_services(base_url, signer)
        text = describe(patients, base_url, fhir_url, services, signer, today, options.service_log)
        print(text, flush=True)
        while fhir.poll() is None and service.poll() is None:
            time.sleep(0.5)
        raise DemoError(
            "a server stopped by itself: "
            f"FHIR server {fhir.returncode}, service {service.returncode}"
        )


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    """Entry point of `twitch-cds demo`; SIGTERM stops it like Ctrl-C.

    Both handlers are set explicitly: a process started in the background by a
    non-interactive shell inherits an ignored SIGINT, and Python then installs none.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        run(
            DemoOptions(
                host=loopback(args.host),
                port=args.port,
                fhir_port=args.fhir_port,
                log_file=args.log_file,
            )
        )
    except KeyboardInterrupt:
        print("\ntwitch-cds demo: both servers stopped.", flush=True)
        return 0
    except DemoError as error:
        print(f"twitch-cds demo: {error}", file=sys.stderr)
        return 1
    return 0


def add_parser(commands: Any) -> None:
    """Registers `demo` on the CLI's subcommands."""
    defaults = DemoOptions()
    demo = commands.add_parser(
        "demo",
        help="run the service and a FHIR server with demo patients, for the CDS Hooks sandbox",
    )
    demo.add_argument("--host", default=defaults.host, help="loopback address of both servers")
    demo.add_argument("--port", type=int, default=defaults.port, help="CDS service port")
    demo.add_argument("--fhir-port", type=int, default=defaults.fhir_port, help="FHIR server port")
    demo.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="where the service's request logs go (default: twitch-cds-demo-PORT.log in the "
        "temp directory); named on screen",
    )
