"""Fuzzing: schemathesis against the app's own OpenAPI schema, and hypothesis-generated prefetch.

Both are bounded and deterministic (derandomized, fixed example counts) so the file runs in
well under a minute and a failure reproduces on every run. The schemathesis part checks the
HTTP surface (no 5xx, declared status codes, response bodies matching their schema); the
prefetch part throws FHIR-ish records built from the real value sets mixed with junk at the
three services and checks that the answer is always 200 with valid cards.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cds.knowledge import load_knowledge
from cds.settings import PROJECT_ROOT, Settings
from cds.web.app import create_app
from tests.conftest import SERVICE_OS, SERVICE_PV, SERVICE_SIGN
from tests.support.cards import assert_valid_card
from tests.support.fhir import ICD10, LOINC, RXNORM, SNOMED, today

# --- schemathesis: the HTTP surface --------------------------------------------------------

_FUZZ_DIR = Path(tempfile.mkdtemp(prefix="twitch-cds-fuzz-"))
atexit.register(shutil.rmtree, _FUZZ_DIR, ignore_errors=True)  # after the app's shutdown
# fhirServer is a generated URI: allow only a closed local port, so no fetch leaves the host.
APP = create_app(
    Settings(
        auth="none",
        database_url=f"sqlite:///{_FUZZ_DIR / 'cds.sqlite3'}",
        fhir_allowed_bases=["http://127.0.0.1:9"],
        fhir_timeout_seconds=0.5,
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True
)
SERVICE_IDS = [SERVICE_PV, SERVICE_OS, SERVICE_SIGN]


@schema.hook
def before_generate_path_parameters(
    context: schemathesis.HookContext, strategy: st.SearchStrategy
) -> st.SearchStrategy:
    """Half of the calls go to a real service, so the pipeline runs, not only the 404."""
    real = st.fixed_dictionaries({"service_id": st.sampled_from(SERVICE_IDS)})
    return st.one_of(strategy, real)


HOOKS = {SERVICE_PV: "patient-view", SERVICE_OS: "order-select", SERVICE_SIGN: "order-sign"}


@schema.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """A call to a real service names that service's hook, so it gets past the hook check."""
    hook = HOOKS.get((case.path_parameters or {}).get("service_id"))
    if (
        hook
        and isinstance(case.body, dict)
        and "hook" in case.body
        and not case.operation.path.endswith("/feedback")
    ):
        case.body["hook"] = hook
    return case


@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_openapi_operations_never_fail_and_conform(case: schemathesis.Case) -> None:
    response = case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]
    )
    if response.status_code >= 400:  # every error is an OperationOutcome
        body = response.json()
        assert body["resourceType"] == "OperationOutcome" and body["issue"], body


# What each operation can answer: the edge's 413/415 on any POST, 401 when TWITCH_CDS_AUTH=jwt,
# and never FastAPI's default 422 (validation errors are 400 OperationOutcomes here).
ANSWERS = {
    ("get", "/cds-services"): {"200", "401"},
    ("post", "/cds-services/{service_id}"): {"200", "400", "401", "404", "412", "413", "415"},
    ("post", "/cds-services/{service_id}/feedback"): {"200", "400", "401", "404", "413", "415"},
}


def test_openapi_documents_every_answer() -> None:
    paths = APP.openapi()["paths"]
    documented = {
        (method, path): set(operation["responses"])
        for path, item in paths.items()
        for method, operation in item.items()
    }
    assert set(documented) == set(ANSWERS)
    for operation, statuses in ANSWERS.items():
        assert statuses <= documented[operation], operation
        assert "422" not in documented[operation], operation
        for status in documented[operation] - {"200"}:  # errors are OperationOutcomes
            content = paths[operation[1]][operation[0]]["responses"][status]["content"]
            assert set(content) == {"application/fhir+json"}, (operation, status)


# --- hypothesis: FHIR-ish prefetch from the real value sets, mixed with junk -----------------

KNOWLEDGE = load_knowledge(PROJECT_ROOT / "rules")
PATIENT_ID = "p1"
TWITCH_CODES = sorted({c.code for c in KNOWLEDGE.valuesets["twitch"].codes})
CONCEPT_CODES = sorted(
    {
        (c.system_uri, c.code + ("9" if c.prefix else ""))
        for vs in KNOWLEDGE.valuesets.values()
        for c in vs.codes
    }
)
LAB_CODES = sorted(
    {(c.code, unit) for a in KNOWLEDGE.labs.analytes.values() for c in a.codes for unit in a.units}
)
OBSERVATION_CODES = sorted(
    {
        (c.code, v.code)
        for o in KNOWLEDGE.labs.coded_observations.values()
        for c in o.codes
        for v in o.positive_values
    }
    | {(c.code, None) for o in KNOWLEDGE.labs.scored_observations.values() for c in o.codes}
)
DRUG_CODES = sorted(
    {i.rxcui for i in KNOWLEDGE.medications.ingredients.values() if i.rxcui}
    | set(KNOWLEDGE.medications.products)
)
DRUG_NAMES = sorted(
    {n for name, i in KNOWLEDGE.medications.ingredients.items() for n in (i.names or [name])}
)
SYSTEMS = [ICD10, SNOMED, LOINC, RXNORM, "http://unitsofmeasure.org", "urn:oid:1.2.3", ""]
OPTIONAL_KEYS = ("patient", "medicationStatements", "familyHistory")

# Junk of the JSON scalar kinds. Containers and integers beyond a float are in CONTAINER_JUNK.
SCALAR_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["", " ", "final", "active", "<b>x</b>", "\u0000", "9" * 40]),
)
CONTAINER_JUNK = st.recursive(
    st.one_of(SCALAR_JUNK, st.integers(min_value=10**309, max_value=10**320)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


class Fuzz:
    """Strategies for one kind of junk; `junk` is mixed into every field of every resource."""

    def __init__(self, junk: st.SearchStrategy, one_in: int) -> None:
        self.junk = junk
        self.one_in = one_in

    def maybe(self, strategy: st.SearchStrategy) -> st.SearchStrategy:
        """Mostly the real thing; junk once in `one_in` draws.

        Not `st.one_of(strategy, junk)`: Hypothesis avoids repeating an input, so a branch
        with few distinct values (a fixed resourceType) would soon lose to the junk branch.
        """
        last = self.one_in - 1
        return st.integers(0, last).flatmap(lambda i: self.junk if i == last else strategy)

    def obj(
        self, required: dict[str, Any], optional: dict[str, Any] | None = None
    ) -> st.SearchStrategy:
        """An object whose fields may also be dropped or replaced by junk."""
        return st.fixed_dictionaries(
            {k: self.maybe(v) for k, v in required.items()},
            optional={k: self.maybe(v) for k, v in (optional or {}).items()},
        )

    @staticmethod
    def weighted(*options: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
        """One of the strategies, chosen with the given integer weights."""
        table = [strategy for weight, strategy in options for _ in range(weight)]
        return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])

    def choice(self, options: dict[str, tuple[int, st.SearchStrategy]]) -> st.SearchStrategy:
        """At most one field of a FHIR choice type (effective[x], value[x]...), as a dict."""
        return self.weighted(
            (1, st.just({})),
            *[
                (weight, strategy.map(lambda value, key=key: {key: value}))
                for key, (weight, strategy) in options.items()
            ],
        )

    def days(self) -> st.SearchStrategy:
        """Mostly within the 365-day lookback; sometimes older, or in the future."""
        return self.weighted(
            (4, st.integers(0, 360).map(lambda n: today() - timedelta(days=n))),
            (1, st.integers(366, 3000).map(lambda n: today() - timedelta(days=n))),
            (1, st.integers(1, 30).map(lambda n: today() + timedelta(days=n))),
        )

    def instant(self) -> st.SearchStrategy:
        return self.days().flatmap(
            lambda d: st.sampled_from(
                [f"{d}T08:30:00Z", f"{d}T23:59:59.123+05:30", f"{d}T00:00:00-11:00"]
            )
        )

    def date(self) -> st.SearchStrategy:
        days = self.days()
        return st.one_of(
            days.map(lambda d: f"{d.year}"),
            days.map(lambda d: d.strftime("%Y-%m")),
            days.map(lambda d: d.isoformat()),
            days.map(lambda d: f"{d}T08:30:00Z"),
            days.map(lambda d: f"{d}T23:59:59.123+05:30"),
            days.map(lambda d: f"{d}T08:30:00"),
            st.sampled_from(["2026-13-01", "yesterday", "0000", "2026-02-30"]),
        )

    def coding(self, pairs: list[tuple[str, str]]) -> st.SearchStrategy:
        real = st.sampled_from(pairs).map(lambda p: {"system": p[0], "code": p[1]})
        other = self.obj(
            {"system": st.sampled_from(SYSTEMS), "code": st.text(min_size=1, max_size=8)},
            {"display": st.text(min_size=1, max_size=20)},
        )
        return self.weighted((4, real), (1, other))

    def concept(self, pairs: list[tuple[str, str]]) -> st.SearchStrategy:
        return self.obj(
            {
                "coding": self.maybe(
                    st.lists(self.maybe(self.coding(pairs)), min_size=1, max_size=3)
                )
            },
            {"text": st.text(min_size=1, max_size=20)},
        )

    def status(self, *values: str) -> st.SearchStrategy:
        """The first value (the one that counts) half the time, else any, or an odd one."""
        return self.weighted(
            (4, st.just(values[0])),
            (3, st.sampled_from(values)),
            (1, st.sampled_from(["entered-in-error", "unknown", "Final", ""])),
        )

    def subject(self) -> st.SearchStrategy:
        return self.obj(
            {
                "reference": st.sampled_from(
                    [
                        f"Patient/{PATIENT_ID}",
                        f"Patient/{PATIENT_ID}",
                        "Patient/p2",
                        f"https://ehr.example.org/fhir/Patient/{PATIENT_ID}",
                        "Group/1",
                        "#p",
                    ]
                )
            }
        )

    def ids(self) -> st.SearchStrategy:
        return st.text(alphabet="abc123-.", min_size=1, max_size=4)

    def condition(self) -> st.SearchStrategy:
        status = self.obj(
            {
                "coding": st.lists(
                    self.obj(
                        {
                            "code": st.sampled_from(
                                [
                                    "active",
                                    "recurrence",
                                    "relapse",
                                    "inactive",
                                    "resolved",
                                    "refuted",
                                    "entered-in-error",
                                    "confirmed",
                                    "unconfirmed",
                                ]
                            )
                        }
                    ),
                    max_size=2,
                )
            }
        )
        return self.obj(
            {
                "resourceType": st.just("Condition"),
                "id": self.ids(),
                "code": self.concept(CONCEPT_CODES),
                "subject": self.subject(),
            },
            {
                "clinicalStatus": status,
                "verificationStatus": status,
                "onsetDateTime": self.date(),
                "recordedDate": self.date(),
                "abatementDateTime": self.date(),
            },
        )

    def quantity(self, unit_of_analyte: str | None = None) -> st.SearchStrategy:
        units = [*sorted({unit for _, unit in LAB_CODES}), "furlongs", "mg", "h", "min", "%"]
        value = self.weighted(
            (4, st.floats(0, 10, allow_nan=False)),
            (3, st.floats(0, 300, allow_nan=False)),
            (2, st.integers(-10, 10_000)),
            (1, st.decimals(0, 50, places=2, allow_nan=False).map(str)),
        )
        unit = self.weighted(
            (3 if unit_of_analyte else 0, st.just(unit_of_analyte)), (1, st.sampled_from(units))
        )
        return self.obj(
            {"value": value, "code": unit},
            {
                "unit": unit,
                "system": st.just("http://unitsofmeasure.org"),
                "comparator": st.sampled_from(["<", ">=", "~"]),
            },
        )

    def observation(self) -> st.SearchStrategy:
        """A lab result (LOINC code with one of its units) or a coded/scored observation."""
        answers = [(SNOMED, answer) for _, answer in OBSERVATION_CODES if answer]

        def build(lab_code: str, unit: str, other_code: str) -> st.SearchStrategy:
            reference = self.obj({}, {"low": self.quantity(unit), "high": self.quantity(unit)})
            base = self.obj(
                {
                    "resourceType": st.just("Observation"),
                    "id": self.ids(),
                    "status": self.status("final", "amended", "corrected", "preliminary"),
                    "code": self.weighted(
                        (3, st.just({"coding": [{"system": LOINC, "code": lab_code}]})),
                        (
                            2,
                            self.concept(
                                [(LOINC, lab_code), (LOINC, other_code), *CONCEPT_CODES[:5]]
                            ),
                        ),
                    ),
                    "subject": self.subject(),
                },
                {"issued": self.instant(), "referenceRange": st.lists(reference, max_size=2)},
            )
            effective = self.choice(
                {
                    "effectiveDateTime": (4, self.date()),
                    "effectiveInstant": (1, self.instant()),
                    "effectivePeriod": (1, self.obj({"start": self.date()})),
                }
            )
            value = self.choice(
                {
                    "valueQuantity": (6, self.quantity(unit)),
                    "valueInteger": (1, st.integers(-3, 30)),
                    "valueCodeableConcept": (2, self.concept([*answers, *CONCEPT_CODES])),
                }
            )
            return st.tuples(base, effective, value).map(
                lambda parts: {**parts[0], **parts[1], **parts[2]}
            )

        return st.tuples(st.sampled_from(LAB_CODES), st.sampled_from(OBSERVATION_CODES)).flatmap(
            lambda p: build(p[0][0], p[0][1], p[1][0])
        )

    def medication(self, kind: str) -> st.SearchStrategy:
        drug = self.obj(
            {},
            {
                "coding": st.lists(
                    self.obj(
                        {
                            "system": st.sampled_from([RXNORM, RXNORM, ""]),
                            "code": st.sampled_from(DRUG_CODES),
                        },
                        {"display": st.sampled_from(DRUG_NAMES)},
                    ),
                    max_size=2,
                ),
                "text": st.sampled_from(DRUG_NAMES).map(lambda n: f"{n} 5 MG tablet"),
            },
        )
        base = self.obj(
            {
                "resourceType": st.just(kind),
                "id": self.ids(),
                "status": self.status(
                    "active", "intended", "draft", "stopped", "completed", "on-hold"
                ),
                "subject": self.subject(),
                "intent": st.just("order"),
            },
            {
                "contained": st.lists(
                    self.obj(
                        {"resourceType": st.just("Medication"), "id": st.just("m1"), "code": drug}
                    ),
                    max_size=1,
                )
            },
        )
        medication = self.choice(
            {
                "medicationCodeableConcept": (3, drug),
                "medicationReference": (
                    1,
                    self.obj(
                        {"reference": st.sampled_from(["#m1", "Medication/m1", "Medication/none"])}
                    ),
                ),
            }
        )
        return st.tuples(base, medication).map(lambda parts: {**parts[0], **parts[1]})

    def family_history(self) -> st.SearchStrategy:
        return self.obj(
            {
                "resourceType": st.just("FamilyMemberHistory"),
                "id": self.ids(),
                "status": self.status("completed", "partial"),
                "patient": self.subject(),
                "relationship": self.concept([("urn:role", "MTH")]),
            },
            {
                "condition": st.lists(self.obj({"code": self.concept(CONCEPT_CODES)}), max_size=2),
                "date": self.date(),
            },
        )

    def other(self) -> st.SearchStrategy:
        patient = self.obj(
            {
                "resourceType": st.just("Patient"),
                "id": st.sampled_from([PATIENT_ID, PATIENT_ID, "p2"]),
            },
            {"gender": st.sampled_from(["male", "female", "other", "unknown"])},
        )
        return st.one_of(
            patient,
            self.obj({"resourceType": st.just("Basic"), "id": self.ids()}),
            self.obj(
                {"resourceType": st.just("Medication"), "id": st.just("m1")},
                {"code": self.concept([(RXNORM, c) for c in DRUG_CODES])},
            ),
            st.just(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "forbidden"}],
                }
            ),
            self.obj({"resourceType": st.sampled_from(["Encounter", "Twitch", "Bundle"])}),
            self.junk,
        )

    def resource(self) -> st.SearchStrategy:
        return st.one_of(
            self.condition(),
            self.observation(),
            self.medication("MedicationRequest"),
            self.medication("MedicationStatement"),
            self.family_history(),
            self.other(),
        )

    def bundle(
        self, entries: st.SearchStrategy, size: int = 4, at_least: int = 1
    ) -> st.SearchStrategy:
        entry = self.weighted((6, st.fixed_dictionaries({"resource": entries})), (1, self.junk))
        return st.fixed_dictionaries(
            {
                "resourceType": st.just("Bundle"),
                "entry": self.maybe(st.lists(entry, min_size=at_least, max_size=size)),
            },
            optional={"type": st.just("searchset")},
        )

    def twitch(self) -> st.SearchStrategy:
        """A documented twitch complaint, so that the rules run and cards are produced."""
        return st.sampled_from([c for c in CONCEPT_CODES if c[1] in TWITCH_CODES]).map(
            lambda c: {
                "resourceType": "Condition",
                "id": "twitch",
                "subject": {"reference": f"Patient/{PATIENT_ID}"},
                "clinicalStatus": {"coding": [{"code": "active"}]},
                "code": {"coding": [{"system": c[0], "code": c[1]}]},
            }
        )

    def nested(self) -> st.SearchStrategy:
        """Resources, Bundles of them, and Bundles of Bundles (deeper than the pool reads)."""
        return st.recursive(self.resource(), lambda inner: self.bundle(inner), max_leaves=4)

    def prefetch(self) -> st.SearchStrategy:
        """The contract keys hold Bundles (else the answer is a 412), the rest anything."""
        required = {
            "conditions": self.bundle(self.condition(), 4, 2),
            "observations": self.bundle(self.observation(), 10, 4),
            "medicationRequests": self.bundle(self.medication("MedicationRequest"), 4, 2),
        }
        optional = {key: st.one_of(self.nested(), st.none(), self.junk) for key in OPTIONAL_KEYS}
        extra = st.dictionaries(
            st.sampled_from(["labs", "meds", "user", "x"]),
            st.one_of(self.nested(), self.junk),
            max_size=2,
        )
        complaint = st.one_of(st.none(), self.twitch())
        return st.tuples(st.fixed_dictionaries(required, optional=optional), extra, complaint).map(
            lambda parts: {**parts[1], **parts[0], **({"complaint": parts[2]} if parts[2] else {})}
        )

    def request(self, hook: str) -> st.SearchStrategy:
        context: dict[str, Any] = {
            "patientId": st.just(PATIENT_ID),
            "userId": st.just("Practitioner/1"),
        }
        if hook != "patient-view":
            context["draftOrders"] = self.bundle(self.medication("MedicationRequest"))
        if hook == "order-select":
            context["selections"] = st.lists(
                st.sampled_from(
                    ["MedicationRequest/a", "MedicationRequest/1", "MedicationRequest/b2"]
                ),
                max_size=2,
            )
        return st.fixed_dictionaries(
            {
                "hookInstance": st.uuids().map(str),
                "hook": st.just(hook),
                "context": st.fixed_dictionaries(context),
                "prefetch": self.prefetch(),
            }
        )


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings_ = Settings(auth="none", database_url=f"sqlite:///{_FUZZ_DIR / 'prefetch.sqlite3'}")
    with TestClient(create_app(settings_), raise_server_exceptions=False) as test_client:
        yield test_client


SERVICES = [
    (SERVICE_PV, "patient-view"),
    (SERVICE_OS, "order-select"),
    (SERVICE_SIGN, "order-sign"),
]


def check_answer(client: TestClient, service: str, request: dict[str, Any]) -> None:
    response = client.post(f"/cds-services/{service}", json=request)
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    for card in body["cards"]:
        assert_valid_card(card)
    codes = [card["source"]["topic"]["code"] for card in body["cards"]]
    assert len(codes) == len(set(codes)), codes
    if not any(code in response.request.content.decode() for code in TWITCH_CODES):
        assert body == {"cards": []}  # no twitch code anywhere: the gate stays shut


SCALARS = Fuzz(SCALAR_JUNK, one_in=20)
CONTAINERS = Fuzz(CONTAINER_JUNK, one_in=6)
FUZZ_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


@pytest.mark.parametrize(("service", "hook"), SERVICES)
def test_fuzzed_prefetch_answers_200_with_valid_cards(
    client: TestClient, service: str, hook: str
) -> None:
    @FUZZ_SETTINGS
    @given(request=SCALARS.request(hook))
    def run(request: dict[str, Any]) -> None:
        check_answer(client, service, request)

    run()


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
@pytest.mark.parametrize(("service", "hook"), SERVICES[:1])
def test_fuzzed_prefetch_with_containers_in_scalar_fields(
    client: TestClient, service: str, hook: str
) -> None:
    @settings(FUZZ_SETTINGS, phases=[Phase.explicit, Phase.generate])  # no shrinking
    @given(request=CONTAINERS.request(hook))
    def run(request: dict[str, Any]) -> None:
        check_answer(client, service, request)

    run()
