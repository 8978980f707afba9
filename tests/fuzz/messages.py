"""Hypothesis strategies for every request message of API v3, built from the protobuf
descriptors (so a field or an RPC added to the protos is fuzzed without touching this file).

Fields are filled at random: scalars with their edge values, enums with valid and out-of-range
numbers, repeated fields, maps, one member (or none) of each oneof, nested messages, and
Timestamp/Duration with extreme and out-of-range values. String fields that hold ids are
biased to real ids of the live server (an `IdPool` the fuzzer keeps up to date), of the wrong
kind, unknown, empty or huge. Targeted strategies add what random generation does not reach
on its own: filters of ~1,000-1,500 conditions, string filter values of ~50-60 KB, ~1,000
sort fields, and requests over the server's maximum receive size."""

from __future__ import annotations

import importlib
import pkgutil
import string
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import armonik.protogen.client
import grpc
import hypothesis.strategies as st
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from pyarmonik.config import Settings

F = FieldDescriptor

# The control plane's maximum receive size (its default `max_request_size`): a request above
# it may be refused with RESOURCE_EXHAUSTED, one below it never.
MAX_RECEIVE_SIZE: int = Settings.model_fields["max_request_size"].default

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
INT_RANGES = {
    F.TYPE_INT32: INT32, F.TYPE_SINT32: INT32, F.TYPE_SFIXED32: INT32,
    F.TYPE_INT64: INT64, F.TYPE_SINT64: INT64, F.TYPE_SFIXED64: INT64,
    F.TYPE_UINT32: UINT32, F.TYPE_FIXED32: UINT32,
    F.TYPE_UINT64: UINT64, F.TYPE_FIXED64: UINT64,
}  # fmt: skip

# Seconds of Timestamp/Duration worth trying: protobuf's limits (Duration ±315,576,000,000 s,
# Timestamp years 1-9999) and just beyond, int64's, and values timers and databases choke on.
EDGE_SECONDS = (
    0, 1, -1, 59, 3600, 86400 * 365, 2**31 - 1, 2**31, 2**32, 10**10,
    253402300799, 253402300800, -62135596800, -62135596801,
    315576000000, 315576000001, -315576000000, -315576000001, 2**53, 2**63 - 1, -(2**63),
)  # fmt: skip
EDGE_NANOS = (0, 1, 999_999_999, 10**9, -1, -999_999_999, -(10**9), 2**31 - 1, -(2**31))

TIME_TYPES = ("google.protobuf.Timestamp", "google.protobuf.Duration")

# Strings a query builder or a storage backend could trip over.
SPECIAL_STRINGS = (
    "", " ", "default", "%", "_", "%%", "*", "?", "[", "[a-z]", "\\", "'", '"', "' OR 1=1 --",
    "\x00", "a\x00b", "é", "😀", "\u202e", "null", "NaN", "-1", "1e309", "..", "../../etc/passwd",
)  # fmt: skip

# Request string fields that hold ids, by the kind of object they name.
ID_FIELDS = {
    "session_id": "session", "session": "session", "sessions": "session",
    "task_id": "task", "task_ids": "task",
    "result_id": "result", "result_ids": "result", "payload_id": "result",
    "data_dependencies": "result", "expected_output_keys": "output",
    "partition_id": "partition", "partition_ids": "partition",
    "ids": "any",
}  # fmt: skip
# `id` fields named by their message, and filter values (filters on ids are the common case).
ID_BY_MESSAGE = {
    "armonik.api.grpc.v1.Session": "session",
    "armonik.api.grpc.v1.partitions.GetPartitionRequest": "partition",
    "armonik.api.grpc.v1.FilterString": "any",
    "armonik.api.grpc.v1.FilterArray": "any",
}
ID_KINDS = ("session", "task", "result", "partition")


def id_kind(fd: FieldDescriptor) -> str | None:
    """The kind of object a string field names, None if it is no id."""
    if fd.name in ("id", "value"):
        return ID_BY_MESSAGE.get(fd.containing_type.full_name)
    return ID_FIELDS.get(fd.name)


@dataclass
class IdPool:
    """Ids of the live server, fed by listings and by the responses of the fuzzer's own calls.

    `focus` is the session the request being drawn is built around: most session ids are it,
    and task and result ids are drawn from it half of the time, so that (session, task/result)
    pairs are often coherent. Running sessions and results still free to be a task's output
    (CREATED, no owner) are tracked apart: plausible requests need them."""

    ids: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in ID_KINDS})
    session_of: dict[str, str] = field(default_factory=dict)
    opaque_ids: list[bytes] = field(default_factory=list)
    running: dict[str, None] = field(default_factory=dict)  # an ordered set
    free: dict[str, None] = field(default_factory=dict)
    focus: str | None = None
    limit: int = 2000
    # filter conditions the server accepted, by Filters type: templates of big filters
    conditions: dict[str, list[Message]] = field(default_factory=dict)
    _seen: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in ID_KINDS})

    def add(self, kind: str, value: str, session: str | None = None) -> None:
        if not value or len(value) > 200:  # no huge ids echoed back into the pool
            return
        if session:
            self.session_of[value] = session
        known, seen = self.ids[kind], self._seen[kind]
        if value in seen:
            return
        known.append(value)
        seen.add(value)
        if len(known) > self.limit:  # forget the oldest quarter
            for old in known[: self.limit // 4]:
                seen.discard(old)
            del known[: self.limit // 4]

    def pick(self, kind: str, index: int) -> str:
        """A real id of `kind` ("any": of any kind; "output": a free result); an unknown one
        while none is known."""
        if kind == "any":
            kind = ID_KINDS[index % len(ID_KINDS)]
            index //= len(ID_KINDS)
        if kind == "session":
            if self.focus and index % 3:
                return self.focus
            if self.running and index % 4:
                return _nth(self.running, index)
        if kind == "output":
            mine = [r for r in list(self.free)[-300:] if self.session_of.get(r) == self.focus]
            if mine or self.free:
                return _nth(mine or self.free, index)
            kind = "result"
        known = self.ids[kind]
        if kind in ("task", "result") and self.focus and index % 2:
            mine = [i for i in known[-400:] if self.session_of.get(i) == self.focus]
            if mine:
                return _nth(mine, index)
        return _nth(known, index) if known else str(uuid.UUID(int=index))

    def learn(self, request: Message) -> None:
        """Remember the filter conditions of a request the server accepted."""
        for fd in filters_fields(request.DESCRIPTOR):
            known = self.conditions.setdefault(condition_type(fd.message_type).full_name, [])
            for conjunction in getattr(getattr(request, fd.name), "or"):
                for condition in getattr(conjunction, "and"):
                    if len(known) < 300 and condition not in known:
                        known.append(condition)

    def condition(self, condition: Descriptor, index: int, kind: str = "") -> Message | None:
        """An accepted condition of this type (FilterField of a package), with a `kind` value
        (e.g. filter_string) if given; None if none is known."""
        known = self.conditions.get(condition.full_name, [])
        if kind:
            known = [c for c in known if c.WhichOneof("value_condition") == kind]
        return known[index % len(known)] if known else None

    def harvest(self, message: Message) -> None:
        """Remember every id found in a response, and what it says of sessions and results."""
        self._track(message)
        for fd, value in message.ListFields():
            if fd.type == F.TYPE_MESSAGE:
                values = value.values() if _is_map(fd) else value if fd.is_repeated else [value]
                for item in values:
                    if isinstance(item, Message):
                        self.harvest(item)
            elif fd.type == F.TYPE_BYTES and fd.name == "opaque_id" and value:
                if value not in self.opaque_ids[-100:]:
                    self.opaque_ids.append(value)
                    del self.opaque_ids[: -self.limit]
            elif fd.type == F.TYPE_STRING:
                kind = _response_id_kind(fd)
                if kind is None:
                    continue
                session = getattr(message, "session_id", None) if kind != "session" else None
                for item in value if fd.is_repeated else [value]:
                    self.add(kind, item, session or None)
                    if fd.name == "expected_output_ids":
                        self.free.pop(item, None)

    def _track(self, message: Message) -> None:
        name = message.DESCRIPTOR.name
        if name == "CreateSessionReply":
            self.running[message.session_id] = None
        elif name == "SessionRaw":
            if message.status == 1:  # SESSION_STATUS_RUNNING
                self.running[message.session_id] = None
            else:
                self.running.pop(message.session_id, None)
        elif name == "ResultRaw":
            if message.status == 1 and not message.owner_task_id:  # RESULT_STATUS_CREATED
                self.free[message.result_id] = None
            else:
                self.free.pop(message.result_id, None)
        for kept in (self.running, self.free):
            while len(kept) > self.limit:
                del kept[next(iter(kept))]


def _nth(values: list[str] | dict[str, None], index: int) -> str:
    items = values if isinstance(values, list) else list(values)
    return items[index % len(items)]


def _response_id_kind(fd: FieldDescriptor) -> str | None:
    """Kind of id of a response field (`id` fields named by their message: TaskDetailed...)."""
    if fd.name in ("id", "ids"):
        owner = fd.containing_type.name.lower()
        for kind in ID_KINDS:
            if kind in owner:
                return kind
        return None
    if fd.name in ("owner_task_id", "initial_task_id", "parent_task_ids"):
        return "task"
    if fd.name in ("expected_output_ids", "data_dependencies", "retry_of_ids"):
        return "result" if fd.name != "retry_of_ids" else "task"
    kind = ID_FIELDS.get(fd.name)
    return {"any": None, "output": "result"}.get(kind, kind) if kind else None


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == F.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


# -- scalars ----------------------------------------------------------------------------------


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Edge values first, then small, then anything in range."""
    edges = sorted({v for v in (0, 1, -1, 2, 10, 100, 1000, low, high, low + 1, high - 1)
                    if low <= v <= high})  # fmt: skip
    return st.one_of(st.sampled_from(edges), st.integers(-5, 500).filter(lambda v: low <= v <= high),
                     st.integers(low, high))  # fmt: skip


def texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(SPECIAL_STRINGS),
        st.text(max_size=24),
        st.builds(
            lambda s, n: s * n, st.sampled_from(["a", "%", "é", "\x00"]), st.integers(100, 5000)
        ),
    )


def binaries() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=64),
        st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=4), st.integers(1, 300_000)),
    )


def wild_ids(pool: IdPool) -> st.SearchStrategy[str]:
    """Wrong ids: real ones of any kind, unknown, empty, odd or huge (16-64 KB: more than fits
    in a gRPC error's metadata if the id is echoed whole)."""
    return st.one_of(
        st.integers(0, 2**20).map(lambda i: pool.pick("any", i)),
        st.uuids().map(str),
        texts(),
        st.builds(lambda c, n: c * n, st.sampled_from("x0-"), st.integers(16_000, 64_000)),
    )


def times(cls: type[Message], sane_max: int, wild: bool) -> st.SearchStrategy[Message]:
    """Timestamp or Duration: sane (sane_max: up to 2100 for a Timestamp, 600 s for a Duration)
    or wild (protobuf's limits and beyond, int64's, odd nanos)."""
    if not wild:
        return st.builds(lambda s, n: cls(seconds=s, nanos=n), st.integers(1, sane_max),
                         st.integers(0, 999_999_999))  # fmt: skip
    seconds = st.one_of(st.sampled_from(EDGE_SECONDS), st.integers(*INT64))
    nanos = st.one_of(st.just(0), st.sampled_from(EDGE_NANOS), st.integers(*INT32))
    return st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, nanos)


NAME_ALPHABET = string.ascii_letters + string.digits + "-_."


# -- messages ---------------------------------------------------------------------------------


class MessageStrategies:
    """Strategies of every message type reached from the request types, cached by type.

    Plausible: every field set, to what a well-behaved client sends (real ids, small numbers,
    valid enums, sane durations), so that requests get past validation and reach deep into the
    server. Otherwise (the default) each field is optional, and plausible three times in four,
    wild else (edge and out-of-range numbers and enums, unknown, odd or huge ids and strings):
    one wild field in a plausible request is what finds a missing check."""

    def __init__(self, pool: IdPool, plausible: bool = False):
        self.pool = pool
        self.plausible = plausible
        self._cache: dict[str, st.SearchStrategy[Message]] = {}

    def message(self, desc: Descriptor) -> st.SearchStrategy[Message]:
        if desc.full_name not in self._cache:
            # deferred: resolves recursive types, and builds sub-strategies on first use
            self._cache[desc.full_name] = st.deferred(lambda: self._build(desc))
        return self._cache[desc.full_name]

    def _build(self, desc: Descriptor) -> st.SearchStrategy[Message]:
        cls = GetMessageClass(desc)
        sane_max = {"google.protobuf.Timestamp": 4_102_444_800, "google.protobuf.Duration": 600}
        if desc.full_name in sane_max:
            return self._mix(times(cls, sane_max[desc.full_name], wild=False),
                             times(cls, sane_max[desc.full_name], wild=True))  # fmt: skip
        generic = self._generic(desc, cls)
        if self.plausible and "value_condition" in desc.oneofs_by_name:
            return self._condition(desc, cls, generic)
        return generic

    def _condition(
        self, desc: Descriptor, cls: type[Message], generic: st.SearchStrategy[Message]
    ) -> st.SearchStrategy[Message]:
        """A filter condition on a (field, kind of value) pair the server accepted before, with
        a new value and operator; a random one while none is known. (Every value kind is drawn
        whatever the pair, so that the draws do not depend on the pool.)"""
        kinds = desc.oneofs_by_name["value_condition"].fields

        def combine(index: int, fallback: Message, values: tuple[Message, ...]) -> Message:
            known = self.pool.condition(desc, index)
            if known is None:
                return fallback
            kind = known.WhichOneof("value_condition")
            msg = cls()
            msg.field.CopyFrom(known.field)
            getattr(msg, kind).CopyFrom(values[[fd.name for fd in kinds].index(kind)])
            return msg

        values = st.tuples(*(self.message(fd.message_type) for fd in kinds))
        return st.builds(combine, st.integers(0, 2**20), generic, values)

    def _generic(self, desc: Descriptor, cls: type[Message]) -> st.SearchStrategy[Message]:
        plain = {fd.name: self.field(fd) for fd in desc.fields if fd.containing_oneof is None}
        oneofs = [
            st.one_of(
                *([] if self.plausible else [st.none()]),
                *[st.tuples(st.just(fd.name), self.field(fd)) for fd in oneof.fields],
            )
            for oneof in desc.oneofs
        ]
        values = (
            st.fixed_dictionaries(plain)
            if self.plausible
            else st.fixed_dictionaries({}, optional=plain)
        )
        return st.builds(
            lambda values, chosen: _fill(cls(), desc, {**values, **dict(c for c in chosen if c)}),
            values,
            st.tuples(*oneofs),
        )

    def field(self, fd: FieldDescriptor) -> st.SearchStrategy[Any]:
        """Values of a field: a single value, a list (repeated) or a dict (map)."""
        low, high = (1, 3) if self.plausible else (0, 4)
        if _is_map(fd):
            key, value = (fd.message_type.fields_by_name[name] for name in ("key", "value"))
            return st.dictionaries(self._single(key), self._single(value), max_size=high)
        single = self._single(fd)
        if fd.is_repeated:
            return st.lists(single, min_size=low, max_size=high)
        return single

    def _mix(self, plausible: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> Any:
        return plausible if self.plausible else st.one_of(plausible, plausible, plausible, wild)

    def wild_single(self, fd: FieldDescriptor) -> st.SearchStrategy[Any]:
        """Only wild values of a (single) field."""
        if fd.type == F.TYPE_MESSAGE and fd.message_type.full_name in TIME_TYPES:
            return times(GetMessageClass(fd.message_type), 0, wild=True)
        if fd.type == F.TYPE_MESSAGE:
            return self.message(fd.message_type)
        if fd.type == F.TYPE_ENUM:
            return integers(*INT32)
        if fd.type in INT_RANGES:
            return integers(*INT_RANGES[fd.type])
        if fd.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return st.floats(width=32 if fd.type == F.TYPE_FLOAT else 64)
        if fd.type == F.TYPE_BYTES:
            return binaries()
        if fd.type == F.TYPE_STRING:
            return wild_ids(self.pool) if id_kind(fd) else texts()
        return st.booleans()

    def _single(self, fd: FieldDescriptor) -> st.SearchStrategy[Any]:
        if fd.type == F.TYPE_MESSAGE:
            return self.message(fd.message_type)
        if fd.type == F.TYPE_ENUM:
            numbers = [v.number for v in fd.enum_type.values]
            # a plausible client sets a value, not UNSPECIFIED (0)
            valid = st.sampled_from([n for n in numbers if n] or numbers)
            return self._mix(valid, integers(*INT32))
        if fd.type in INT_RANGES:
            # a plausible client sets a value (0 is "unset"), but reads the first page first
            low = 0 if fd.name == "page" else 1
            return self._mix(st.integers(low, 10), integers(*INT_RANGES[fd.type]))
        if fd.type == F.TYPE_BOOL:
            return st.booleans()
        if fd.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            width = 32 if fd.type == F.TYPE_FLOAT else 64
            return self._mix(st.floats(0, 10, width=width), st.floats(width=width))
        if fd.type == F.TYPE_BYTES:
            if fd.name == "opaque_id":
                return self._mix(st.integers(0, 2**20).map(self._opaque_id), binaries())
            return self._mix(st.binary(max_size=64), binaries())
        if fd.type == F.TYPE_STRING:
            kind = id_kind(fd)
            if kind:
                real = st.integers(0, 2**20).map(lambda i: self.pool.pick(kind, i))
                return self._mix(real, wild_ids(self.pool))
            return self._mix(st.text(NAME_ALPHABET, min_size=1, max_size=12), texts())
        raise NotImplementedError(f"field type {fd.type} of {fd.full_name}")

    def _opaque_id(self, index: int) -> bytes:
        known = self.pool.opaque_ids
        return known[index % len(known)] if known else uuid.UUID(int=index).bytes


def _fill(msg: Message, desc: Descriptor, values: dict[str, Any]) -> Message:
    for name, value in values.items():
        fd = desc.fields_by_name[name]
        target = getattr(msg, name) if fd.type == F.TYPE_MESSAGE or fd.is_repeated else None
        if _is_map(fd):
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif fd.is_repeated:
            target.extend(value)
        elif fd.type == F.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


# -- targeted strategies ----------------------------------------------------------------------


def filters_fields(desc: Descriptor) -> list[FieldDescriptor]:
    """Top-level fields of a request holding ArmoniK filters (Filters → or → and → condition)."""
    return [
        fd
        for fd in desc.fields
        if fd.type == F.TYPE_MESSAGE
        and fd.message_type.name == "Filters"
        and "or" in fd.message_type.fields_by_name
    ]


def condition_type(filters: Descriptor) -> Descriptor:
    and_type = filters.fields_by_name["or"].message_type
    return and_type.fields_by_name["and"].message_type


def big_filters(plausible: MessageStrategies, filters: Descriptor) -> st.SearchStrategy[Message]:
    """Filters of 900-1,600 conditions: one conjunction of them all, or as many disjunctions
    of one condition, built by repeating a few conditions (drawing 1,500 conditions one by
    one would overrun Hypothesis' buffer). The conditions are mostly ones the server accepted
    before: random ones are rejected by validation before any query is built."""
    pool = plausible.pool
    known = st.integers(0, 2**20).map(lambda i: pool.condition(condition_type(filters), i))
    random = plausible.message(condition_type(filters))
    condition = st.one_of(st.tuples(known, random).map(lambda kr: kr[0] or kr[1]), random)

    def build(templates: list[Message], count: int, shape: str) -> Message:
        msg = GetMessageClass(filters)()
        conditions = [templates[i % len(templates)] for i in range(count)]
        if shape == "and":
            getattr(getattr(msg, "or").add(), "and").extend(conditions)
        else:
            for item in conditions:
                getattr(getattr(msg, "or").add(), "and").append(item)
        return msg

    return st.builds(
        build,
        st.lists(condition, min_size=1, max_size=5),
        st.integers(900, 1600),
        st.sampled_from(["and", "or"]),
    )


def long_string_filters(
    plausible: MessageStrategies, filters: Descriptor
) -> st.SearchStrategy[Message]:
    """One string condition of a 40-61 KB value (LIKE pattern limits), on a field the server
    accepted a string condition on before, or a random one."""
    cond_type = condition_type(filters)
    if "filter_string" not in cond_type.fields_by_name:
        return st.nothing()
    pool = plausible.pool
    known = st.integers(0, 2**20).map(lambda i: pool.condition(cond_type, i, "filter_string"))
    random = plausible.message(cond_type)
    condition = st.one_of(st.tuples(known, random).map(lambda kr: kr[0] or kr[1]), random)

    def build(template: Message, char: str, size: int) -> Message:
        msg = GetMessageClass(filters)()
        cond = getattr(getattr(msg, "or").add(), "and").add()
        cond.CopyFrom(template)
        cond.filter_string.value = char * size  # (sets the oneof to filter_string)
        return msg

    return st.builds(
        build, condition, st.sampled_from(["a", "%", "_", "é", "*"]), st.integers(40_000, 61_000)
    )


def many_sort_fields(plausible: MessageStrategies, desc: Descriptor) -> st.SearchStrategy[Message]:
    """A plausible request whose sort has 900-1,200 fields (where `sort.fields` is repeated)."""
    sort = desc.fields_by_name.get("sort")
    if sort is None or "fields" not in sort.message_type.fields_by_name:
        return st.nothing()
    field_type = sort.message_type.fields_by_name["fields"].message_type

    def build(base: Message, templates: list[Message], count: int) -> Message:
        for fd in filters_fields(desc):  # random filters are mostly rejected: none
            base.ClearField(fd.name)
        base.sort.ClearField("fields")
        base.sort.fields.extend(templates[i % len(templates)] for i in range(count))
        return base

    return st.builds(
        build,
        plausible.message(desc),
        st.lists(plausible.message(field_type), min_size=1, max_size=6),
        st.integers(900, 1200),
    )


def leaves(msg: Message, times_only: bool = False) -> list[tuple[Message, FieldDescriptor, int]]:
    """The set scalar fields of a message, Timestamp and Duration included, recursively, as
    (holder, field, index in a repeated field or -1); map fields are left out."""
    found: list[tuple[Message, FieldDescriptor, int]] = []
    for fd, value in msg.ListFields():
        if _is_map(fd):
            continue
        items = list(enumerate(value)) if fd.is_repeated else [(-1, value)]
        for index, item in items:
            is_time = fd.type == F.TYPE_MESSAGE and fd.message_type.full_name in TIME_TYPES
            if fd.type == F.TYPE_MESSAGE and not is_time:
                found += leaves(item, times_only)
            elif is_time or not times_only:
                found.append((msg, fd, index))
    return found


def mutants(
    plausible: MessageStrategies, wild: MessageStrategies, desc: Descriptor, times_only: bool
) -> st.SearchStrategy[Message]:
    """A plausible request with one field (one Timestamp or Duration if `times_only`) set to a
    wild value: what finds a missing check behind the others."""

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = draw(plausible.message(desc))
        found = leaves(msg, times_only)
        if not found:
            return msg
        holder, fd, index = found[draw(st.integers(0, len(found) - 1))]
        value = draw(wild.wild_single(fd))
        if fd.type == F.TYPE_MESSAGE:
            (getattr(holder, fd.name)[index] if index >= 0 else getattr(holder, fd.name)).CopyFrom(
                value
            )
        elif index >= 0:
            getattr(holder, fd.name)[index] = value
        else:
            setattr(holder, fd.name, value)
        return msg

    return build()


def has_times(desc: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a Timestamp or Duration is reachable from the message type."""
    for fd in desc.fields:
        if fd.type != F.TYPE_MESSAGE or fd.message_type.full_name in seen:
            continue
        if fd.message_type.full_name in TIME_TYPES:
            return True
        if has_times(fd.message_type, seen | {desc.full_name}):
            return True
    return False


def targeted(
    plausible: MessageStrategies, wild: MessageStrategies, desc: Descriptor
) -> st.SearchStrategy[Message]:
    """What random generation seldom builds: big filters, long string filters, many sort
    fields, extreme times in plausible requests; `nothing()` if none applies."""
    options: list[st.SearchStrategy[Message]] = []
    for fd in filters_fields(desc):
        for filters in (
            big_filters(plausible, fd.message_type),
            long_string_filters(plausible, fd.message_type),
        ):
            options.append(st.builds(_with_field(fd.name), plausible.message(desc), filters))
    options.append(many_sort_fields(plausible, desc))
    if (durations := extreme_durations(plausible, desc)) is not None:
        options.append(durations)
    if has_times(desc):
        options.append(mutants(plausible, wild, desc, times_only=True))
    return st.one_of(options)


TASK_OPTIONS = "armonik.api.grpc.v1.TaskOptions"


def extreme_durations(
    plausible: MessageStrategies, desc: Descriptor
) -> st.SearchStrategy[Message] | None:
    """Plausible requests whose task options (the request's own, and each task creation's)
    are valid but for an extreme max_duration: such options were once stored, then broke every
    read of them. None if the request carries no task options."""
    direct = [f for f in desc.fields if f.message_type and f.message_type.full_name == TASK_OPTIONS]
    nested = [
        (f, sub)
        for f in desc.fields
        if f.message_type is not None and f.is_repeated
        for sub in f.message_type.fields
        if sub.message_type and sub.message_type.full_name == TASK_OPTIONS
    ]
    if not direct and not nested:
        return None

    def build(base: Message, seconds: int, nanos: int) -> Message:
        targets = [getattr(base, f.name) for f in direct]
        targets += [getattr(item, sub.name) for f, sub in nested for item in getattr(base, f.name)]
        for options in targets:
            options.max_retries, options.priority = 1, 1
            options.max_duration.seconds, options.max_duration.nanos = seconds, nanos
        return base

    return st.builds(
        build,
        plausible.message(desc),
        st.sampled_from(EDGE_SECONDS),
        st.sampled_from((0, *EDGE_NANOS[:3])),
    )


def _with_field(name: str) -> Callable[[Message, Message], Message]:
    def replace(base: Message, value: Message) -> Message:
        getattr(base, name).CopyFrom(value)
        return base

    return replace


def oversized(strategies: MessageStrategies, desc: Descriptor) -> st.SearchStrategy[Message]:
    """A request just over the maximum receive size, through its first string field (the only
    case where RESOURCE_EXHAUSTED is a right answer)."""
    string_fields = [fd for fd in desc.fields if fd.type == F.TYPE_STRING and not fd.is_repeated]
    if not string_fields:
        return st.nothing()

    def build(base: Message) -> Message:
        setattr(base, string_fields[0].name, "x" * (MAX_RECEIVE_SIZE + 1024))
        return base

    return st.builds(build, strategies.message(desc))


# Client-stream orders, as indices into the request's oneof (UploadResultData: 0 the id, 1 a
# data chunk): nothing, the id alone, data alone, data before the id, two ids, an id after the
# data, data around the id, and the right order.
STREAM_ORDERS = ((), (0,), (1,), (1, 0), (0, 0, 1), (0, 1, 0), (1, 0, 1), (0, 1, 1))


def stream_orders(
    strategies: MessageStrategies, desc: Descriptor
) -> st.SearchStrategy[list[Message]] | None:
    """Request sequences of a client stream built on its request's oneof, in good and bad
    orders; None if the request has no oneof of two members or more."""
    oneof = next((o for o in desc.oneofs if len(o.fields) >= 2), None)
    if oneof is None:
        return None
    cls = GetMessageClass(desc)
    members = [
        strategies.field(fd).map(lambda v, name=fd.name: _fill(cls(), desc, {name: v}))
        for fd in oneof.fields
    ]
    orders = st.one_of(
        st.sampled_from(STREAM_ORDERS),
        st.lists(st.integers(0, len(members) - 1), max_size=6).map(tuple),
    )
    return orders.flatmap(
        lambda order: st.tuples(*(members[min(i, len(members) - 1)] for i in order)).map(list)
    )


# -- services ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    """One RPC of API v3 and its stub."""

    service: ServiceDescriptor
    method: MethodDescriptor
    stub_class: type

    @property
    def name(self) -> str:
        return f"{self.service.name}.{self.method.name}"

    @property
    def kind(self) -> str:
        m = self.method
        return {(False, False): "unary", (False, True): "server_stream",
                (True, False): "client_stream", (True, True): "bidi"}[
            (m.client_streaming, m.server_streaming)]  # fmt: skip

    def callable(self, channel: grpc.Channel) -> Any:
        return getattr(self.stub_class(channel), self.method.name)


def every_rpc() -> Iterator[Rpc]:
    """Every RPC of every client service of the installed `armonik` package."""
    package = armonik.protogen.client
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if not module.DESCRIPTOR.services_by_name:
            continue
        stubs = importlib.import_module(f"{package.__name__}.{info.name}_grpc")
        for service in module.DESCRIPTOR.services_by_name.values():
            stub_class = getattr(stubs, f"{service.name}Stub")
            for method in service.methods:
                yield Rpc(service, method, stub_class)
