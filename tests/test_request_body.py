"""Decoding request bodies (cds/decision/request_body.py): the lazy decoding of large bodies
must leave the service seeing exactly what decoding everything would show it.

What the service reads of a prefetch is the resource pool (cds/decision/prefetch.py) and,
through it, the facts: both must come out the same either way, for realistic records and for
any shape of JSON a client may send. Over HTTP, tests/test_ehr_shapes.py and
tests/test_synthea_cases.py run every case both ways (the `both_decoders` fixture).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds.decision import request_body
from cds.decision.context import has_next_page
from cds.decision.facts import READ_TYPES
from cds.decision.pipeline import build_pipeline
from cds.decision.prefetch import PATIENT_REFERENCES, ResourcePool, is_prefetched
from cds.knowledge import load_knowledge
from cds.settings import Settings
from tests.conftest import SERVICE_PV

FIXTURES = Path(__file__).parent / "fixtures"
PATIENT = "p1"


@pytest.fixture
def decode(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`decode(body, lazily)`: request_body.parse with the lazy path forced on or off."""

    def run(body: bytes, lazily: bool) -> Any:
        monkeypatch.setattr(request_body, "LAZY_FROM_BYTES", 0 if lazily else 1 << 62)
        return request_body.parse(body)

    yield run


def pooled(document: Any, patient_id: str) -> ResourcePool:
    pool = ResourcePool()
    prefetch = document.get("prefetch") if isinstance(document, dict) else None
    if isinstance(prefetch, dict):
        pool.add_all(prefetch.values(), patient_id)
    return pool


def assert_same_or_head(whole: Any, lazy: Any) -> None:
    """A resource decoded lazily is the resource itself or, of a type no fact reads, its head
    (a resource that is itself a prefetch value, not a Bundle entry, is always whole)."""
    if lazy == whole:
        return
    kind = whole.get("resourceType")
    assert isinstance(kind, str), "only a resource of a known type may be cut to its head"
    assert kind not in READ_TYPES | {"Bundle"}, f"{kind} is read: it must arrive whole"
    assert lazy == {k: whole[k] for k in request_body.Head.__annotations__ if k in whole}


def assert_same_pool(whole: ResourcePool, lazy: ResourcePool) -> None:
    """The same resources in the same order, and the same counts of what was left out."""
    assert lazy.by_type.keys() == whole.by_type.keys()
    for kind, found in whole.by_type.items():
        assert len(lazy.by_type[kind]) == len(found)
        for whole_resource, lazy_resource in zip(found, lazy.by_type[kind], strict=True):
            assert_same_or_head(whole_resource, lazy_resource)
    assert lazy.references.keys() == whole.references.keys()
    for url, resource in whole.references.items():
        assert_same_or_head(resource, lazy.references[url])
    assert (lazy.skipped, lazy.other_patient) == (whole.skipped, whole.other_patient)


def request_with(prefetch: dict[str, Any], patient_id: str) -> bytes:
    return json.dumps(
        {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"patientId": patient_id},
            "prefetch": prefetch,
        }
    ).encode()


def records() -> Iterator[tuple[str, dict[str, Any], str]]:
    """Every realistic record in the fixtures, as a prefetch Bundle with its patient's id."""
    for path in sorted((FIXTURES / "synthea").glob("*.json")):
        bundle = json.loads(path.read_text())
        patient = next(
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
        )
        yield path.stem, bundle, patient["id"]


@pytest.mark.parametrize(("name", "bundle", "patient_id"), list(records()))
def test_a_synthea_record_gives_the_same_pool_and_facts(
    decode: Any, name: str, bundle: dict[str, Any], patient_id: str
) -> None:
    body = request_with({"everything": bundle}, patient_id)
    whole, lazy = decode(body, lazily=False), decode(body, lazily=True)
    assert_same_pool(pooled(whole, patient_id), pooled(lazy, patient_id))
    pipeline = build_pipeline(load_knowledge(Settings().rules_dir), Settings())
    today = date(2026, 11, 29)
    facts = [
        pipeline.facts.build(pool.by_type, today, None, pool.references)
        for pool in (pooled(whole, patient_id), pooled(lazy, patient_id))
    ]
    assert facts[0].facts == facts[1].facts
    assert facts[0].facts, f"{name}: no facts at all, so the comparison proves nothing"


def test_resources_of_unread_types_keep_only_their_head(decode: Any) -> None:
    [(_, bundle, patient_id)] = [r for r in records() if r[0].startswith("Renato_Dare")]
    document = decode(request_with({"everything": bundle}, patient_id), lazily=True)
    resources = [e["resource"] for e in document["prefetch"]["everything"]["entry"]]
    claims = [r for r in resources if r["resourceType"] == "Claim"]
    assert claims, "the record has claims"
    assert all(set(c) <= {"resourceType", "id", *PATIENT_REFERENCES} for c in claims)
    assert all(c["patient"]["reference"].endswith(patient_id) for c in claims)
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    original = [e["resource"] for e in bundle["entry"]]
    assert observations == [r for r in original if r["resourceType"] == "Observation"]


def test_head_fields_are_the_ones_the_pool_reads() -> None:
    assert set(request_body.Head.__annotations__) == {"resourceType", "id", *PATIENT_REFERENCES}


@pytest.mark.parametrize(
    "body",
    [
        b'{"hook": "patient-view", "prefetch": {"a": {"resourceType": "Bundle", "entry": [}}',
        b'{"hook": "patient-view", "prefetch": {"a": {"resourceType": "Bundle", "entry": '
        b'[{"resource": {"resourceType": "Claim", "id": }}]}}}',
        b'{"hook": "patient-view", "prefetch": {"a": 1}',
    ],
)
def test_malformed_json_gets_the_same_error_either_way(
    make_client: Any, monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    whole, lazy = answers_both_ways(make_client(), monkeypatch, body)
    assert whole == lazy
    assert whole[0] == 400
    assert "JSON" in json.dumps(whole[1])


def test_a_prefetch_that_is_not_an_object_gets_the_same_error_either_way(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = request_with({}, PATIENT).replace(b'"prefetch": {}', b'"prefetch": [1, 2]')
    whole, lazy = answers_both_ways(make_client(), monkeypatch, body)
    assert whole == lazy
    assert whole[0] == 400
    assert "prefetch" in json.dumps(whole[1])


def answers_both_ways(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, body: bytes
) -> list[tuple[int, Any]]:
    """The status and JSON answer to `body`, decoded whole, then lazily."""
    answers = []
    for limit in (1 << 62, 0):
        monkeypatch.setattr(request_body, "LAZY_FROM_BYTES", limit)
        response = client.post(
            f"/cds-services/{SERVICE_PV}",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        answers.append((response.status_code, response.json()))
    return answers


# --- any shape of JSON ------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
references = st.one_of(
    st.fixed_dictionaries(
        {
            "reference": st.sampled_from(
                ["Patient/p1", "Patient/p2", "urn:uuid:u1", "Patient/p1/_history/2", "Group/g"]
            )
        }
    ),
    json_values,
)
resource_types = st.sampled_from(
    [*sorted(READ_TYPES), "Claim", "ExplanationOfBenefit", "Procedure", "Bundle", "Patient"]
)


@st.composite
def resources(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    resource: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        resource["resourceType"] = draw(resource_types | json_values)
    if draw(st.booleans()):
        resource["id"] = draw(st.sampled_from(["a", "b", "p1", "p2"]) | json_values)
    for name in PATIENT_REFERENCES:
        if draw(st.booleans()):
            resource[name] = draw(references)
    resource.update(draw(st.dictionaries(st.sampled_from(["code", "status", "x"]), json_values)))
    if resource.get("resourceType") == "Bundle" and draw(st.booleans()):
        resource["entry"] = draw(st.lists(entries(), max_size=3))
    return resource


@st.composite
def entries(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    entry: dict[str, Any] = {}
    if draw(st.booleans()):
        entry["fullUrl"] = draw(st.sampled_from(["urn:uuid:u1", "urn:uuid:u2"]) | json_values)
    if draw(st.integers(0, 5)):
        entry["resource"] = draw(resources())
    if draw(st.booleans()):
        entry["search"] = {"mode": "match"}
    return entry


prefetch_values = st.one_of(
    st.fixed_dictionaries(
        {"resourceType": st.just("Bundle"), "entry": st.lists(entries(), max_size=6)},
        optional={
            "link": st.just([{"relation": "next", "url": "http://x/next"}]) | json_values,
            "type": st.just("searchset"),
        },
    ),
    st.fixed_dictionaries({"resourceType": st.just("Bundle"), "entry": json_values}),
    resources(),
    st.none(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefetch=st.dictionaries(st.sampled_from(["a", "b", "c", "patient"]), prefetch_values),
    extra=st.dictionaries(st.sampled_from(["extension", "x"]), json_values, max_size=1),
)
def test_any_prefetch_gives_the_same_pool_either_way(
    prefetch: dict[str, Any], extra: dict[str, Any]
) -> None:
    body = json.dumps(
        {
            "hook": "patient-view",
            "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"patientId": PATIENT},
            "prefetch": prefetch,
            **extra,
        }
    ).encode()
    whole = json.loads(body)
    lazy = request_body._document(body)  # the lazy path itself, whatever the body's size
    assert {k: v for k, v in lazy.items() if k != "prefetch"} == {
        k: v
        for k, v in whole.items()
        if k in request_body.HookBody.__struct_fields__ and k != "prefetch"
    }
    assert_same_pool(pooled(whole, PATIENT), pooled(lazy, PATIENT))
    for key, value in whole["prefetch"].items():
        assert is_prefetched(lazy["prefetch"][key]) == is_prefetched(value)
        assert has_next_page(lazy["prefetch"][key]) == has_next_page(value)
