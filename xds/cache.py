"""Versioned snapshots of Envoy resources, one current snapshot per node group.

A snapshot is immutable, and a change costs what it touches: the snapshots of one
chain (each built from the one before with `Snapshot.evolve`) share one table per
resource type, in which every name keeps only the bodies that some live snapshot
still sees ("fat nodes"). A snapshot of that chain is a stamp into the tables, so
building one copies nothing, and two snapshots of a chain know which names changed
between them, which is what a delta stream needs to answer one change with one
resource. Per-type versions are kept as sums of per-resource hashes, updated by the
changed resources only.

Everything a stream needs that does not depend on the stream (per-resource and
per-type versions, the protobuf wire encoding of each resource inside a response) is
derived once per resource body and shared by every stream and snapshot that sees it,
so pushing to many gateways never re-encodes a resource.

A snapshot may carry a state-of-the-world variant (`for_sotw`): gateways on the
state-of-the-world protocol get their listeners and routes from it (one route
configuration per listener instead of scoped routes), everything else is shared.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import heapq
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from wakegate.xds.resources import CLUSTER, TYPES_IN_ORDER, Resources, content_version

# Field tags (number << 3 | wire type 2) of the length-delimited fields that the
# responses are assembled from.


def _tag(message: type, name: str) -> bytes:
    return _varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | 2)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return b"".join((tag, _varint(len(payload)), payload))


_ANY_TYPE_URL = b"\x0a"  # google.protobuf.Any.type_url = 1
_ANY_VALUE = b"\x12"  # google.protobuf.Any.value = 2
_RESP_VERSION = _tag(discovery_pb2.DiscoveryResponse, "version_info")
_RESP_RESOURCES = _tag(discovery_pb2.DiscoveryResponse, "resources")
_RESP_TYPE_URL = _tag(discovery_pb2.DiscoveryResponse, "type_url")
_RESP_NONCE = _tag(discovery_pb2.DiscoveryResponse, "nonce")
_DELTA_VERSION = _tag(discovery_pb2.DeltaDiscoveryResponse, "system_version_info")
_DELTA_RESOURCES = _tag(discovery_pb2.DeltaDiscoveryResponse, "resources")
_DELTA_TYPE_URL = _tag(discovery_pb2.DeltaDiscoveryResponse, "type_url")
_DELTA_REMOVED = _tag(discovery_pb2.DeltaDiscoveryResponse, "removed_resources")
_DELTA_NONCE = _tag(discovery_pb2.DeltaDiscoveryResponse, "nonce")
_RES_NAME = _tag(discovery_pb2.Resource, "name")
_RES_VERSION = _tag(discovery_pb2.Resource, "version")
_RES_RESOURCE = _tag(discovery_pb2.Resource, "resource")


def _any(type_url: str, body: bytes) -> bytes:
    return _field(_ANY_TYPE_URL, type_url.encode()) + _field(_ANY_VALUE, body)


def encode_sotw_response(
    *, type_url: str, version: str, nonce: str, resources: Iterable[bytes]
) -> bytes:
    """A serialised DiscoveryResponse from pre-encoded resource fields."""
    return b"".join(
        (
            _field(_RESP_VERSION, version.encode()),
            *resources,
            _field(_RESP_TYPE_URL, type_url.encode()),
            _field(_RESP_NONCE, nonce.encode()),
        )
    )


def encode_delta_response(
    *,
    type_url: str,
    system_version: str,
    nonce: str,
    resources: Iterable[bytes],
    removed: Iterable[str],
) -> bytes:
    """A serialised DeltaDiscoveryResponse from pre-encoded resource fields."""
    return b"".join(
        (
            _field(_DELTA_VERSION, system_version.encode()),
            *resources,
            _field(_DELTA_TYPE_URL, type_url.encode()),
            *(_field(_DELTA_REMOVED, name.encode()) for name in removed),
            _field(_DELTA_NONCE, nonce.encode()),
        )
    )


_MASK = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15


def _pair_hash(name: str, version: str) -> int:
    """A 64-bit hash of a resource's name and (content-hash) version; a type's version is
    the sum of these over its resources, so it follows any change of name or content."""
    return (int(version, 16) ^ (zlib.crc32(name.encode()) * _MIX)) & _MASK


# --- one resource type across a chain of snapshots ------------------------------------------


class _Entry:
    """One body a name had from `stamp` on (None: the name was removed then)."""

    __slots__ = ("body", "delta", "eds", "sotw", "stamp", "version")

    def __init__(self, stamp: int, body: bytes | None, version: str) -> None:
        self.stamp = stamp
        self.body = body
        self.version = version
        self.sotw: bytes | None = None
        self.delta: bytes | None = None
        self.eds: str | None = None


History = _Entry | list[_Entry]
"""The bodies one name had, oldest first; a single entry is kept bare (most names)."""


def _at(history: History, stamp: int) -> _Entry | None:
    if type(history) is _Entry:
        return history if history.stamp <= stamp and history.body is not None else None
    for entry in reversed(history):  # type: ignore[arg-type]
        if entry.stamp <= stamp:
            return entry if entry.body is not None else None
    return None


def _last(history: History) -> _Entry:
    return history if type(history) is _Entry else history[-1]  # type: ignore[index,return-value]


class _Table:
    """Every body of one resource type that a live snapshot of the chain still sees.

    Snapshots register the stamp they read at (`hold`, undone when they are garbage
    collected); writing a name drops the bodies no live stamp reaches any more, and
    removed names are forgotten once no live snapshot is older than their removal.
    """

    def __init__(self) -> None:
        self.entries: dict[str, History] = {}
        self.stamp = 0
        self.log: collections.deque[tuple[int, frozenset[str]]] = collections.deque()
        self._live: collections.Counter[int] = collections.Counter()
        self._heap: list[int] = []
        self._removed: collections.deque[tuple[int, str]] = collections.deque()
        self._lock = threading.Lock()

    def hold(self, stamp: int) -> None:
        with self._lock:
            self._live[stamp] += 1
            if self._live[stamp] == 1:
                heapq.heappush(self._heap, stamp)

    def release(self, stamp: int) -> None:
        with self._lock:
            self._live[stamp] -= 1

    def _oldest_live(self) -> int:
        with self._lock:
            heap, live = self._heap, self._live
            while heap and live[heap[0]] <= 0:
                del live[heapq.heappop(heap)]
            return heap[0] if heap else self.stamp

    def write(self, bodies: Mapping[str, bytes | None], versions: Mapping[str, str]) -> int:
        """Record the changed (or removed) names at a new stamp, which it returns."""
        stamp = self.stamp + 1
        oldest = self._oldest_live()
        entries = self.entries
        for name, body in bodies.items():
            entry = _Entry(stamp, body, versions.get(name, ""))
            history = entries.get(name)
            if history is None:
                entries[name] = entry
            elif type(history) is _Entry:
                entries[name] = [history, entry]
            else:
                history.append(entry)  # type: ignore[union-attr]
                while len(history) > 1 and history[1].stamp <= oldest:  # type: ignore[arg-type,index]
                    del history[0]  # type: ignore[union-attr]
                if len(history) == 1:  # type: ignore[arg-type]
                    entries[name] = history[0]  # type: ignore[index]
            if body is None:
                self._removed.append((stamp, name))
        self.log.append((stamp, frozenset(bodies)))
        self.stamp = stamp
        self._forget(oldest)
        return stamp

    def _forget(self, oldest: int) -> None:
        while self.log and self.log[0][0] <= oldest:
            self.log.popleft()
        removed, entries = self._removed, self.entries
        while removed and removed[0][0] <= oldest:
            _, name = removed.popleft()
            history = entries.get(name)
            if history is not None:
                last = _last(history)
                if last.body is None and last.stamp <= oldest:
                    del entries[name]

    def changed(self, after: int, upto: int) -> set[str]:
        """Names written at a stamp in (after, upto]; `after` must still be live."""
        out: set[str] = set()
        for stamp, names in reversed(self.log):
            if stamp <= after:
                break
            if stamp <= upto:
                out.update(names)
        return out


_V = TypeVar("_V")


class _Column(Mapping[str, _V]):
    """One field of every entry of a type, by name, read from the entries themselves."""

    __slots__ = ("_data",)

    def __init__(self, data: _TypeData) -> None:
        self._data = data

    def _value(self, entry: _Entry) -> _V:
        raise NotImplementedError

    def __getitem__(self, name: str) -> _V:
        entry = self._data.entry(name)
        if entry is None:
            raise KeyError(name)
        return self._value(entry)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._data.entry(name) is not None

    def __iter__(self) -> Iterator[str]:
        return self._data.names()

    def __len__(self) -> int:
        return self._data.length


class _Bodies(_Column[bytes]):
    __slots__ = ()

    def _value(self, entry: _Entry) -> bytes:
        return entry.body  # type: ignore[return-value]


class _Versions(_Column[str]):
    __slots__ = ()

    def _value(self, entry: _Entry) -> str:
        return entry.version


class _Fields(Mapping[str, bytes]):
    """Each resource of a type encoded for a response, built on first use and kept."""

    __slots__ = ("_data", "_kind")

    def __init__(self, data: _TypeData, kind: str) -> None:
        self._data = data
        self._kind = kind

    def __getitem__(self, name: str) -> bytes:
        entry = self._data.entry(name)
        if entry is None:
            raise KeyError(name)
        return self._data.encode(name, entry, self._kind)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._data.entry(name) is not None

    def __iter__(self) -> Iterator[str]:
        return self._data.names()

    def __len__(self) -> int:
        return self._data.length


class _TypeData:
    """The resources of one type as one snapshot sees them: a stamp into a shared table."""

    __slots__ = ("__weakref__", "_all", "digest", "length", "stamp", "table", "type_url")

    def __init__(self, type_url: str, table: _Table, stamp: int, length: int, digest: int):
        self.type_url = type_url
        self.table = table
        self.stamp = stamp
        self.length = length
        self.digest = digest
        self._all: bytes | None = None
        table.hold(stamp)
        weakref.finalize(self, table.release, stamp)

    @classmethod
    def empty(cls, type_url: str) -> _TypeData:
        return cls(type_url, _Table(), 0, 0, 0)

    @property
    def version(self) -> str:
        return f"{self.digest:016x}"

    def entry(self, name: str) -> _Entry | None:
        history = self.table.entries.get(name)
        return None if history is None else _at(history, self.stamp)

    def names(self) -> Iterator[str]:
        stamp = self.stamp
        for name, history in list(self.table.entries.items()):
            if _at(history, stamp) is not None:
                yield name

    def evolve(self, changes: Mapping[str, bytes | None]) -> _TypeData:
        """The data after `changes` (name → new body, None to remove); self if none apply."""
        if not self.table.entries and self.stamp == self.table.stamp:
            return self._fill(changes)
        if self.stamp != self.table.stamp:
            # Another snapshot was already derived from this one: start a table of its own.
            return _TypeData.build(self.type_url, {**_Bodies(self), **changes}, self)
        effective: dict[str, bytes | None] = {}
        versions: dict[str, str] = {}
        length, digest = self.length, self.digest
        for name, body in changes.items():
            old = self.entry(name)
            if body is not None and type(body) is not bytes:
                body = bytes(body)
            if old is None:
                if body is None:
                    continue
                length += 1
            else:
                if body is not None and (old.body is body or old.body == body):
                    continue
                digest -= _pair_hash(name, old.version)
                if body is None:
                    length -= 1
            if body is not None:
                version = versions[name] = content_version(body)
                digest += _pair_hash(name, version)
            effective[name] = body
        if not effective:
            return self
        stamp = self.table.write(effective, versions)
        return _TypeData(self.type_url, self.table, stamp, length, digest & _MASK)

    def _fill(self, bodies: Mapping[str, bytes | None]) -> _TypeData:
        """`evolve` of an empty table: every body is new (the first snapshot of a chain)."""
        table = self.table
        stamp = table.stamp + 1
        entries = table.entries
        digest = 0
        sha256, crc32, entry = hashlib.sha256, zlib.crc32, _Entry
        for name, body in bodies.items():
            if body is None:
                continue
            if type(body) is not bytes:
                body = bytes(body)
            head = sha256(body).digest()[:8]  # content_version, without a second pass
            digest += (int.from_bytes(head, "big") ^ (crc32(name.encode()) * _MIX)) & _MASK
            entries[name] = entry(stamp, body, head.hex())
        if not entries:
            return self
        table.log.append((stamp, frozenset(entries)))
        table.stamp = stamp
        return _TypeData(self.type_url, table, stamp, len(entries), digest & _MASK)

    @classmethod
    def build(
        cls, type_url: str, bodies: Mapping[str, bytes], previous: _TypeData | None = None
    ) -> _TypeData:
        """The data holding exactly `bodies`: derived from `previous` when possible (only
        the differences are written), otherwise a table of its own."""
        if previous is not None and previous.stamp == previous.table.stamp:
            changes: dict[str, bytes | None] = dict.fromkeys(
                (name for name in previous.names() if name not in bodies), None
            )
            for name, body in bodies.items():
                old = previous.entry(name)
                if old is None or not (old.body is body or old.body == body):
                    changes[name] = body
            return previous.evolve(changes)
        return cls.empty(type_url).evolve(dict(bodies))

    def changed_since(self, other: _TypeData | None) -> set[str] | None:
        """Names whose body differs between `other` and this data, when both belong to one
        chain with `other` first; None when that cannot be told (then compare in full)."""
        if other is None or other.table is not self.table or other.stamp > self.stamp:
            return None
        if other.stamp == self.stamp:
            return set()
        return self.table.changed(other.stamp, self.stamp)

    def encode(self, name: str, entry: _Entry, kind: str) -> bytes:
        if kind == "sotw":
            if entry.sotw is None:
                entry.sotw = _field(_RESP_RESOURCES, _any(self.type_url, entry.body or b""))
            return entry.sotw
        if entry.delta is None:
            entry.delta = _field(
                _DELTA_RESOURCES,
                b"".join(
                    (
                        _field(_RES_NAME, name.encode()),
                        _field(_RES_VERSION, entry.version.encode()),
                        _field(_RES_RESOURCE, _any(self.type_url, entry.body or b"")),
                    )
                ),
            )
        return entry.delta

    def sotw_all(self) -> bytes:
        if self._all is None:
            fields = _Fields(self, "sotw")
            self._all = b"".join(fields[name] for name in self.names())
        return self._all


class _ReadOnly(Mapping[str, Mapping[str, object]]):
    __slots__ = ("_items",)

    def __init__(self, items: dict[str, Mapping[str, object]]) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Mapping[str, object]:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


Changes = Mapping[str, Mapping[str, bytes | None]]
"""type URL → resource name → new serialised body, or None to remove it."""

SotwSource = Callable[[], Resources]
"""Builds the types a state-of-the-world gateway gets instead of the snapshot's own."""


class Snapshot:
    """One consistent set of resources for a node group.

    `version` is chosen by the caller and must be unique per `set_snapshot` of a
    group. Per-resource versions are content hashes, so a resource that did not
    change keeps its version across snapshots; a type's version is a hash of its
    resources' names and versions, independent of their order.

    Built from whole `resources`, a snapshot given the group's `previous` one shares
    its tables (only the differences are written); `evolve` derives the next snapshot
    from the changes alone, without looking at the resources that did not change.
    """

    __slots__ = ("__weakref__", "_data", "_previous", "_sotw", "_sotw_source", "version")

    def __init__(
        self,
        version: str,
        resources: Resources | None = None,
        previous: Snapshot | None = None,
        *,
        sotw: SotwSource | None = None,
    ) -> None:
        given = resources or {}
        unknown = set(given) - set(TYPES_IN_ORDER)
        if unknown:
            raise ValueError(f"unknown resource type(s): {', '.join(sorted(unknown))}")
        data: dict[str, _TypeData] = {}
        for type_url in TYPES_IN_ORDER:
            before = previous._data[type_url] if previous is not None else None
            bodies = given.get(type_url, {})
            if before is not None and isinstance(bodies, _Bodies) and bodies._data is before:
                data[type_url] = before
            else:
                data[type_url] = _TypeData.build(type_url, bodies, before)
        self._init(version, data, previous, sotw)

    def _init(
        self,
        version: str,
        data: dict[str, _TypeData],
        previous: Snapshot | None,
        sotw: SotwSource | None,
    ) -> None:
        self.version = version
        self._data = data
        self._previous = weakref.ref(previous) if previous is not None else None
        self._sotw_source = sotw
        self._sotw: Snapshot | None = None

    def evolve(
        self, version: str, changes: Changes, *, sotw: SotwSource | None = None
    ) -> Snapshot:
        """The next snapshot of this chain: this one with `changes` applied."""
        unknown = set(changes) - set(TYPES_IN_ORDER)
        if unknown:
            raise ValueError(f"unknown resource type(s): {', '.join(sorted(unknown))}")
        data = dict(self._data)
        for type_url, named in changes.items():
            if named:
                data[type_url] = data[type_url].evolve(named)
        snapshot = Snapshot.__new__(Snapshot)
        snapshot._init(version, data, self, sotw)
        return snapshot

    # --- what the streams read ----------------------------------------------------------

    @property
    def resources(self) -> Mapping[str, Mapping[str, bytes]]:
        """type URL → resource name → serialised body (read-only views)."""
        return _ReadOnly({t: _Bodies(d) for t, d in self._data.items()})  # type: ignore[return-value]

    @property
    def resource_versions(self) -> Mapping[str, Mapping[str, str]]:
        return _ReadOnly({t: _Versions(d) for t, d in self._data.items()})  # type: ignore[return-value]

    @property
    def type_versions(self) -> Mapping[str, str]:
        return {t: d.version for t, d in self._data.items()}

    def names(self, type_url: str) -> Mapping[str, str]:
        """Resource name → version for one type."""
        return _Versions(self._data[type_url])

    def count(self, type_url: str) -> int:
        return self._data[type_url].length

    def changed_since(self, other: Snapshot | None, type_url: str) -> set[str] | None:
        """Names of `type_url` whose body differs from `other`'s, when `other` is an
        earlier snapshot of this chain that is still alive; None when unknown."""
        if other is None:
            return None
        return self._data[type_url].changed_since(other._data[type_url])

    def sotw_fields(self, type_url: str) -> Mapping[str, bytes]:
        """Each resource as an encoded `DiscoveryResponse.resources` field."""
        return _Fields(self._data[type_url], "sotw")

    def sotw_all(self, type_url: str) -> bytes:
        """Every resource of a type, encoded as `DiscoveryResponse.resources` fields."""
        return self._data[type_url].sotw_all()

    def delta_fields(self, type_url: str) -> Mapping[str, bytes]:
        """Each resource as an encoded `DeltaDiscoveryResponse.resources` field."""
        return _Fields(self._data[type_url], "delta")

    def eds_names(self, clusters: Iterable[str]) -> set[str]:
        """The endpoint (ClusterLoadAssignment) names that these clusters use (EDS
        clusters only: a DNS-resolved cluster carries its endpoints inline)."""
        data = self._data[CLUSTER]
        out = set()
        for name in clusters:
            entry = data.entry(name)
            if entry is None:
                out.add(name)
                continue
            if entry.eds is None:
                entry.eds = name
                with contextlib.suppress(DecodeError):
                    cluster = cluster_pb2.Cluster.FromString(entry.body or b"")
                    service = cluster.eds_cluster_config.service_name
                    is_eds = cluster.type == cluster_pb2.Cluster.EDS
                    entry.eds = (service or name) if is_eds else ""
            if entry.eds:
                out.add(entry.eds)
        return out

    def for_sotw(self) -> Snapshot:
        """What a state-of-the-world gateway gets: this snapshot, or its variant with the
        types the snapshot's `sotw` source builds (built once, on first use)."""
        if self._sotw is not None:
            return self._sotw
        if self._sotw_source is None:
            return self
        previous = self._previous() if self._previous is not None else None
        before = previous._sotw if previous is not None else None
        data = dict(self._data)
        for type_url, bodies in self._sotw_source().items():
            old = before._data[type_url] if before is not None else None
            data[type_url] = _TypeData.build(type_url, bodies, old)
        variant = Snapshot.__new__(Snapshot)
        variant._init(self.version, data, before, None)
        self._sotw = variant
        self._sotw_source = None
        return variant


Watcher = Callable[[], None]

_HISTORY = 10_000


@dataclass
class _Group:
    snapshot: Snapshot | None = None
    seq: int = 0
    history: OrderedDict[str, int] = field(default_factory=OrderedDict)
    watchers: dict[int, tuple[asyncio.AbstractEventLoop | None, Watcher]] = field(
        default_factory=dict
    )


class SnapshotCache:
    """The current snapshot of each node group; safe to update from any thread.

    Each `set_snapshot` gets a sequence number within its group so that "this
    version or a later one" is well defined for acknowledgement tracking.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self._next_watch = 0

    def set_snapshot(self, group: str, snapshot: Snapshot) -> None:
        """Make `snapshot` current for `group` and wake every stream of the group."""
        with self._lock:
            state = self._groups.setdefault(group, _Group())
            current = state.snapshot
            if current is not None and current.version == snapshot.version:
                if current.type_versions == snapshot.type_versions:
                    return
                raise ValueError(
                    f"snapshot version {snapshot.version!r} of group {group!r} "
                    "was already used for different resources"
                )
            if snapshot.version in state.history:
                raise ValueError(
                    f"snapshot version {snapshot.version!r} of group {group!r} was already used"
                )
            state.seq += 1
            state.snapshot = snapshot
            state.history[snapshot.version] = state.seq
            while len(state.history) > _HISTORY:
                state.history.popitem(last=False)
            watchers = list(state.watchers.values())
        for loop, wake in watchers:
            _call(loop, wake)

    def get_snapshot(self, group: str) -> Snapshot | None:
        with self._lock:
            state = self._groups.get(group)
            return state.snapshot if state else None

    def groups(self) -> list[str]:
        with self._lock:
            return [name for name, state in self._groups.items() if state.snapshot is not None]

    def current(self, group: str) -> tuple[int, Snapshot] | None:
        """The current snapshot of `group` and its sequence number."""
        with self._lock:
            state = self._groups.get(group)
            if state is None or state.snapshot is None:
                return None
            return state.seq, state.snapshot

    def sequence(self, group: str, version: str) -> int | None:
        """The sequence number `version` got in `group`, if it is remembered."""
        with self._lock:
            state = self._groups.get(group)
            return state.history.get(version) if state else None

    def watch(self, group: str, wake: Watcher) -> Callable[[], None]:
        """Call `wake` (on the caller's event loop) after each change of `group`.

        Returns a function that cancels the watch.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._next_watch += 1
            key = self._next_watch
            self._groups.setdefault(group, _Group()).watchers[key] = (loop, wake)

        def cancel() -> None:
            with self._lock:
                state = self._groups.get(group)
                if state is not None:
                    state.watchers.pop(key, None)

        return cancel


def _call(loop: asyncio.AbstractEventLoop | None, wake: Watcher) -> None:
    if loop is None:
        wake()
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        wake()
    elif not loop.is_closed():
        loop.call_soon_threadsafe(wake)
