"""Element-level reading: a resource is checked only in the elements the service reads.

Validating a resource whole with its fhir.resources R4B model loses it for a fault in any
element - a vendor element, an R5 or STU3 element, a blank `method.text`, an extension with
two `value[x]` - although nothing the service reads is wrong, and a critical potassium is then
as good as absent. It is also slow (~120 us per resource, most of it the model's own checks).
HAPI FHIR's lenient parser keeps reading past such faults; so does this module, and it counts
them:

- Each resource type has a *projection* (`READS`): the elements, and for some the sub-elements,
  its fact family reads. Only those are checked, against the R4B element models' definitions
  (which elements exist, which repeat, which are required) and the R4B primitive types (the
  code, dateTime, decimal... patterns), so a fault elsewhere cannot matter and costs nothing.
- Within the projection, what HAPI tolerates is tolerated and counted by kind: an unknown
  element, a blank string or null, a malformed extension (extensions are never read), a
  number where a string belongs (read as that string), an object where a list belongs (read
  as a list of one, `record.listed`). A code or string with surrounding spaces is read
  without them (`record.text`), uncounted.
- Any other fault in a read element - a non-blank invalid value the service would lose, a
  wrong shape, a missing required element - makes the resource unreadable, with the element
  named as the reason. Only that resource is set aside.

Top-level elements outside the projection are only looked at for the counts (unknown names,
blank strings, malformed extensions), never checked further.

A primitive type's check depends on nothing but the value, and the same values (systems,
codes, units, statuses) come back in every resource and every request: each verdict is kept
(`_PRIMITIVE_VERDICTS`, bounded) and the validator runs once per distinct value.
"""

from __future__ import annotations

import types
import typing
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.familymemberhistory import FamilyMemberHistory
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from pydantic import BaseModel, TypeAdapter, ValidationError

UNKNOWN = "unknown element"
BLANK = "blank value"
EXTENSION = "malformed extension"
PRIMITIVE = "invalid primitive"
# An object where a list belongs (`"coding": {...}`): HAPI reads it as a list of one, and
# warns (its LenientErrorHandler's "incorrect JSON type"); so does the service.
SINGLE = "object for a list"
FAULT_KINDS = (UNKNOWN, BLANK, EXTENSION, PRIMITIVE, SINGLE)
EXTENSIONS = ("extension", "modifierExtension")

# A projection: element name -> None (read whole) or the projection of its sub-elements (for a
# list, of each item).
Projection = Mapping[str, "Projection | None"]

_REFERENCE: Projection = {"reference": None, "identifier": None, "type": None}
_WHOLE: Projection | None = None
# Every value[x]: the labs read a quantity or a string, the findings whether any value is there.
_VALUE: dict[str, Projection | None] = {
    f"value{kind}": _WHOLE
    for kind in (
        "Quantity",
        "CodeableConcept",
        "String",
        "Boolean",
        "Integer",
        "Range",
        "Ratio",
        "SampledData",
        "Time",
        "DateTime",
        "Period",
    )
} | {
    "dataAbsentReason": None,
    "interpretation": None,
    "referenceRange": None,
}
# A dosage's route says whether a drug is systemic. The dose a drug card states is read
# leniently beside it (medications.dose): a garbled dose never sets a drug aside.
_DOSAGE: Projection = {"route": None}
_MEDICATION: dict[str, Projection | None] = {
    "status": None,
    "medicationCodeableConcept": None,
    "medicationReference": {"reference": None, "display": None},
    "subject": _REFERENCE,
    "contained": None,  # where a `#id` medicationReference points
}

# What each fact family reads, per resource type (cds/decision/facts/*.py).
READS: dict[str, tuple[type[BaseModel], Projection]] = {
    "Observation": (
        Observation,
        {
            "status": None,
            "code": None,
            "subject": _REFERENCE,
            "effectiveDateTime": None,
            "effectiveInstant": None,
            "effectivePeriod": None,
            "effectiveTiming": None,
            "issued": None,
            **_VALUE,
            "component": {"code": None, **_VALUE},
            # Whether a finding is the patient's own answer (assessment app) or a clinician's.
            "derivedFrom": {"reference": None, "type": None},
        },
    ),
    "Condition": (
        Condition,
        {
            "code": None,
            "clinicalStatus": None,
            "verificationStatus": None,
            "onsetDateTime": None,
            "recordedDate": None,
            "subject": _REFERENCE,
            # Any abatement[x] ends a Condition without a clinical status.
            **{
                f"abatement{kind}": None
                for kind in ("DateTime", "Age", "Period", "Range", "String")
            },
        },
    ),
    "MedicationRequest": (
        MedicationRequest,
        {
            **_MEDICATION,
            "intent": None,
            "doNotPerform": None,
            "authoredOn": None,
            "dosageInstruction": _DOSAGE,
        },
    ),
    "MedicationStatement": (
        MedicationStatement,
        {
            **_MEDICATION,
            "effectiveDateTime": None,
            "effectivePeriod": None,
            "dosage": _DOSAGE,
        },
    ),
    "FamilyMemberHistory": (
        FamilyMemberHistory,
        {
            "status": None,
            "patient": _REFERENCE,
            "relationship": None,
            "date": None,
            "condition": {"code": None},
        },
    ),
}


@dataclass(frozen=True)
class Reading:
    """The outcome of reading one resource: the faulty read element that makes it unreadable
    (None when readable), and the tolerated faults by kind."""

    unreadable: str | None
    faults: Counter[str]


@dataclass(frozen=True)
class _Element:
    """What the R4B model says of one element: whether it repeats, whether it is required,
    and its type - an element model, or a primitive type's validator."""

    many: bool
    required: bool
    model: type[BaseModel] | None
    primitive: Callable[[Any], Any] | None
    text: bool = False
    extension: bool = False


# A compiled check of one element's value: whether it can be read, counting tolerated faults.
Check = Callable[[Any, Counter[str]], bool]


@dataclass(frozen=True)
class _Resource:
    """The compiled checks of one resource type: the read elements' checks by name, the
    type's elements (for the counts of the others) and the required read elements."""

    checks: dict[str, Check]
    elements: dict[str, _Element]
    required: tuple[str, ...]


def read(resource: Mapping[str, Any]) -> Reading:
    """Check the elements of `resource` that the service reads; count the others' faults."""
    faults: Counter[str] = Counter()
    kind = resource.get("resourceType")
    compiled = _COMPILED.get(kind) if isinstance(kind, str) else None
    if compiled is None:
        return Reading(None, faults)
    checks, elements = compiled.checks, compiled.elements
    for name, value in resource.items():
        check = checks.get(name)
        if check is not None:
            if not check(value, faults):
                return Reading(name, faults)
        elif name != "resourceType":
            _count_unread(name, value, elements, faults)
    missing = [n for n in compiled.required if _absent(resource.get(n))]
    return Reading(missing[0] if missing else None, faults)


def _compile_resource(model: type[BaseModel], projection: Projection) -> _Resource:
    elements = _elements(model)
    return _Resource(
        {name: _compile(elements[name], sub) for name, sub in projection.items()},
        elements,
        tuple(name for name in projection if elements[name].required),
    )


def _compile(element: _Element, projection: Projection | None) -> Check:
    """The check of an element's value, built once per element of a projection, so that a
    request pays for walking its values, not for looking up what the model says of them."""
    if element.extension:

        def extensions(value: Any, faults: Counter[str]) -> bool:
            _count_extensions(value, faults)
            return True

        return extensions
    one = (
        _compile_model(element.model, projection)
        if element.model is not None
        else _compile_primitive(element)
    )
    if not element.many:
        return one

    def many(value: Any, faults: Counter[str]) -> bool:
        if isinstance(value, list):
            if not value:
                faults[BLANK] += 1
            return all(one(item, faults) for item in value)
        if isinstance(value, dict) and value:
            faults[SINGLE] += 1  # read as a list of one (record.listed)
        elif not _absent(value):
            return False  # a string or number where a list belongs: not read
        return one(value, faults)

    return many


def _compile_model(model: type[BaseModel], projection: Projection | None) -> Check:
    """An element whose type is an element model: its read sub-elements are checked (all of
    them when the projection reads it whole, and then unknown names are counted)."""
    elements = _elements(model)
    names = elements if projection is None else projection
    # Filled on first use: element models nest (Extension in Extension, Identifier in
    # Reference in Identifier), so compiling them all up front would never end.
    checks: dict[str, Check] = {}
    required = tuple(name for name in names if elements[name].required)

    def check(value: Any, faults: Counter[str]) -> bool:
        if not isinstance(value, dict) or not value:
            if _absent(value):
                faults[BLANK] += 1
                return True
            return False
        for name, item in value.items():
            child = checks.get(name)
            if child is None:
                if name not in names:
                    if projection is None and not name.startswith("_") and name != "fhir_comments":
                        faults[UNKNOWN] += 1  # (an `_name` holds a primitive's extensions)
                    continue
                child = checks[name] = _compile(
                    elements[name], None if projection is None else projection[name]
                )
            if not child(item, faults):
                return False
        return all(not _absent(value.get(name)) for name in required)

    return check


def _compile_primitive(element: _Element) -> Check:
    validator, text = element.primitive, element.text

    def check(value: Any, faults: Counter[str]) -> bool:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                faults[BLANK] += 1
                return True
        elif value is None or value == [] or value == {}:
            faults[BLANK] += 1
            return True
        elif text and isinstance(value, int | float) and not isinstance(value, bool):
            faults[PRIMITIVE] += 1  # a number where a string belongs: read as that string
            return True
        if validator is None:  # a contained resource or other open type: not read
            return True
        return _valid_primitive(validator, value)

    return check


# Verdicts of primitive checks, by (validator, type, value); emptied when full, so that a
# stream of distinct values (dates, numbers) cannot grow it without bound.
_PRIMITIVE_VERDICTS: dict[tuple[Callable[[Any], Any], type, Any], bool] = {}
MAX_PRIMITIVE_VERDICTS = 50_000


def _valid_primitive(check: Callable[[Any], Any], value: Any) -> bool:
    if isinstance(value, list | dict):  # a list or an object where a primitive belongs
        return _verdict(check, value)
    key = (check, type(value), value)  # with the type: True == 1 == 1.0 as keys
    verdict = _PRIMITIVE_VERDICTS.get(key)
    if verdict is None:
        verdict = _verdict(check, value)
        if len(_PRIMITIVE_VERDICTS) >= MAX_PRIMITIVE_VERDICTS:
            _PRIMITIVE_VERDICTS.clear()
        _PRIMITIVE_VERDICTS[key] = verdict
    return verdict


def _verdict(check: Callable[[Any], Any], value: Any) -> bool:
    try:
        check(value)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def _count_unread(
    name: str, value: Any, elements: dict[str, _Element], faults: Counter[str]
) -> None:
    """Count, without checking them, the plain faults of the top-level elements nobody reads."""
    if name in EXTENSIONS:
        _count_extensions(value, faults)
    elif name.startswith("_"):
        return
    elif name not in elements:
        faults[UNKNOWN] += 1
    elif _absent(value):
        faults[BLANK] += 1


def _count_extensions(value: Any, faults: Counter[str]) -> None:
    """An extension has a `url` and one `value[x]` or nested extensions; others are counted."""
    extensions = value if isinstance(value, list) else [value]
    malformed = sum(
        not isinstance(e, dict)
        or not isinstance(e.get("url"), str)
        or sum(key.startswith("value") for key in e) > 1
        for e in extensions
    )
    if malformed:
        faults[EXTENSION] += malformed


def _absent(value: Any) -> bool:
    """Null, a blank string, or an empty list or object: no value (FHIR forbids them)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, list | dict) and not value


@cache
def _elements(model: type[BaseModel]) -> dict[str, _Element]:
    """The elements of an R4B model by their JSON name, from its field definitions."""
    found: dict[str, _Element] = {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        annotation, optional = _unwrap_optional(field.annotation)
        required = not optional or bool(extra.get("element_required"))
        many = typing.get_origin(annotation) in (list, typing.List)  # noqa: UP006
        if many:
            annotation = typing.get_args(annotation)[0]
        klass = getattr(annotation, "get_model_klass", None)
        model_of = klass() if callable(klass) else None
        if (field.alias or name) in EXTENSIONS:  # never read: only their shape is counted
            element = _Element(many, required, None, None, extension=True)
        elif isinstance(model_of, type) and issubclass(model_of, BaseModel):
            element = _Element(many, required, model_of, None)
        elif typing.get_origin(annotation) is typing.Annotated or annotation in (bool, int, str):
            base = typing.get_args(annotation)[0] if typing.get_args(annotation) else annotation
            check = TypeAdapter(annotation).validator.validate_python
            element = _Element(many, required, None, check, base is str)
        else:  # a contained resource or another open type: never read
            element = _Element(many, required, None, None)
        found[field.alias or name] = element
    return found


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (it, False)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


_COMPILED = {
    kind: _compile_resource(model, projection) for kind, (model, projection) in READS.items()
}
