"""Request bodies -> Python objects; of a large record, only what the facts read in full.

A prefetch Bundle from an EHR often carries far more than the facts read: a Synthea record
is half claims and explanations of benefit. Turning all of it into Python objects costs
time (parsing, then the garbage collector walking and freeing every object) and memory
(a 6.7 MB record becomes ~24 MB of objects). So the prefetch of a large body is decoded
lazily with msgspec: every Bundle entry's resource is first seen as raw JSON, and only the
types a fact family reads (`cds.decision.facts.READ_TYPES`) are decoded in full. Other resources are
decoded to their `Head`, the fields the resource pool needs to count them, drop duplicates
and check whose they are; their other fields are never read.

Of a Bundle, what the pool reads is kept (its type, paging links, and each entry's full URL
and resource); everything else in the request is decoded in full, as is any part whose shape
is unexpected (a Bundle whose `entry` is not a list, an entry that is not an object...), so
the pool sees what it always saw and judges it as before. Small bodies are decoded in one go
by orjson (see `LAZY_FROM_BYTES`). A body the fast decoders refuse goes to the standard
`json` module, which reads what it allows beyond strict JSON (NaN, lone surrogates) and words
the error of malformed JSON, with its position.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypedDict

import msgspec
import orjson

from cds.decision.facts import READ_TYPES

# Splitting a body into raw parts costs a scan of it per level (request, Bundle, resource):
# below about a megabyte that costs more than decoding everything in one go with orjson.
# Measured (decoding, then one garbage collection and freeing; bench/cases.py bodies):
# 62 KB medium 0.49-0.63 ms lazily against 0.40; 1.5 MB Synthea record 10.7-10.9 against
# 17-19 ms; 6.7 MB record 48-51 against 98-106 ms, and 7 against 24 MB of objects.
LAZY_FROM_BYTES = 1024 * 1024
# Bundles nest (a search result holding a Bundle): those are decoded in full, like the
# types that are read, so that the pool unpacks them as before.
_DECODED_IN_FULL = READ_TYPES | {"Bundle"}


class HookBody(msgspec.Struct):
    """A hook request with its prefetch values still raw. Other members of the request are
    decoded in full; unknown ones are dropped (the wire models ignore them anyway)."""

    hook: Any = msgspec.UNSET
    hookInstance: Any = msgspec.UNSET
    fhirServer: Any = msgspec.UNSET
    fhirAuthorization: Any = msgspec.UNSET
    context: Any = msgspec.UNSET
    prefetch: dict[str, msgspec.Raw] | msgspec.UnsetType = msgspec.UNSET


class Head(TypedDict, total=False):
    """What the pool reads of a resource: its type, id, and whose it is
    (`cds.decision.prefetch.PATIENT_REFERENCES`). The decoder skips every other field, and
    gives the fields the JSON had as a dict, as the full decode does."""

    resourceType: Any
    id: Any
    subject: Any
    patient: Any


class Entry(TypedDict, total=False):
    """What the pool reads of a Bundle entry: its full URL, and the resource, still raw."""

    fullUrl: Any
    resource: msgspec.Raw


class Bundle(msgspec.Struct):
    """What is read of a prefetched Bundle: the type, the paging links and the entries."""

    resourceType: Any = msgspec.UNSET
    link: Any = msgspec.UNSET
    entry: list[Entry] | msgspec.UnsetType = msgspec.UNSET


_any = msgspec.json.Decoder()
_hook_body = msgspec.json.Decoder(HookBody)
_bundle = msgspec.json.Decoder(Bundle)
_head = msgspec.json.Decoder(Head)


def parse(body: bytes) -> Any:
    """The body as Python objects; in a large body, prefetched resources of unread types as
    their head."""
    with collector_paused():
        try:
            return orjson.loads(body) if len(body) < LAZY_FROM_BYTES else _document(body)
        except (orjson.JSONDecodeError, msgspec.DecodeError):
            return json.loads(body)


@contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection while a JSON document is turned into objects.

    Parsed JSON holds no reference cycles, so a collection in the middle of parsing frees
    nothing; it only walks the objects parsed so far, and a large record (hundreds of thousands
    of objects) triggers many such walks: about a third of the parse time of a 6 MB body.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _document(body: bytes) -> Any:
    """A hook request with its prefetch decoded as it is read; any other document, or a
    request whose prefetch is not an object, decoded in full."""
    try:
        request = _hook_body.decode(body)
    except msgspec.ValidationError:
        return _any.decode(body)
    if request.prefetch is msgspec.UNSET:
        return _any.decode(body)
    document = _present(request, tuple(n for n in HookBody.__struct_fields__ if n != "prefetch"))
    document["prefetch"] = {key: _prefetched(raw) for key, raw in request.prefetch.items()}
    return document


def _prefetched(raw: msgspec.Raw) -> Any:
    """One prefetch value: a Bundle with its entries' resources decoded as they are read;
    anything else, or a Bundle of an unexpected shape, decoded in full."""
    try:
        bundle = _bundle.decode(raw)
    except msgspec.ValidationError:
        return _any.decode(raw)
    if bundle.resourceType != "Bundle" or bundle.entry is msgspec.UNSET:
        return _any.decode(raw)
    for entry in bundle.entry:
        if "resource" in entry:
            entry["resource"] = _resource(entry["resource"])
    return {**_present(bundle, ("resourceType", "link")), "entry": bundle.entry}


def _resource(raw: msgspec.Raw) -> Any:
    """A resource of a type that is read (or of an unexpected shape) decoded in full; any
    other resource decoded to its head."""
    try:
        head = _head.decode(raw)
    except msgspec.ValidationError:
        return _any.decode(raw)
    kind = head.get("resourceType")
    if not isinstance(kind, str) or kind in _DECODED_IN_FULL:
        return _any.decode(raw)
    return head


def _present(struct: msgspec.Struct, names: tuple[str, ...]) -> dict[str, Any]:
    """The fields of `struct` that the JSON had, as a dict like the full decode gives."""
    return {name: value for name in names if (value := getattr(struct, name)) is not msgspec.UNSET}
