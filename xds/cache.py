"""Versioned snapshots of Envoy resources, one current snapshot per node group.

A snapshot is immutable. Everything a stream needs that does not depend on the
stream (per-resource and per-type versions, the protobuf wire encoding of each
resource inside a response) is derived once per snapshot and shared by every
stream of the group, so pushing to many gateways never re-encodes a resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import InitVar, dataclass, field
from types import MappingProxyType

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


def _type_version(versions: Mapping[str, str]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(versions):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(versions[name].encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One consistent set of resources for a node group.

    `version` is chosen by the caller and must be unique per `set_snapshot` of a
    group. Per-resource versions are content hashes, so a resource that did not
    change keeps its version across snapshots; a type's version is a hash of its
    resources' names and versions.

    Given the group's `previous` snapshot, every resource whose serialised bytes
    are the very same object is neither hashed nor wire-encoded again, so a small
    change to a large snapshot costs little more than the resources it touched.
    """

    version: str
    resources: Resources
    previous: InitVar[Snapshot | None] = None
    resource_versions: Mapping[str, Mapping[str, str]] = field(init=False, repr=False)
    type_versions: Mapping[str, str] = field(init=False, repr=False)
    _encoded: dict[tuple[str, str], object] = field(init=False, repr=False)
    _inherited: dict[tuple[str, str], tuple[Mapping[str, bytes], Mapping[str, bytes]]] = field(
        init=False, repr=False
    )
    _given: dict[str, Mapping[str, bytes]] = field(init=False, repr=False)

    def __post_init__(self, previous: Snapshot | None) -> None:
        unknown = set(self.resources) - set(TYPES_IN_ORDER)
        if unknown:
            raise ValueError(f"unknown resource type(s): {', '.join(sorted(unknown))}")
        resources: dict[str, Mapping[str, bytes]] = {}
        resource_versions: dict[str, Mapping[str, str]] = {}
        type_versions: dict[str, str] = {}
        encoded: dict[tuple[str, str], object] = {}
        inherited: dict[tuple[str, str], tuple[Mapping[str, bytes], Mapping[str, bytes]]] = {}
        given: dict[str, Mapping[str, bytes]] = {}
        for type_url in TYPES_IN_ORDER:
            given[type_url] = self.resources.get(type_url, {})
            old = previous.resources[type_url] if previous is not None else {}
            if previous is not None and given[type_url] is previous._given[type_url]:
                bodies: Mapping[str, bytes] = old
            else:
                bodies = {
                    name: body if type(body) is bytes else bytes(body)
                    for name, body in given[type_url].items()
                }
            if previous is not None and (
                bodies is old
                or (
                    len(bodies) == len(old)
                    and all(old.get(name) is body for name, body in bodies.items())
                )
            ):
                resources[type_url] = old
                resource_versions[type_url] = previous.resource_versions[type_url]
                type_versions[type_url] = previous.type_versions[type_url]
                for kind in ("sotw", "sotw-all", "delta"):
                    if (kind, type_url) in previous._encoded:
                        encoded[(kind, type_url)] = previous._encoded[(kind, type_url)]
                continue
            old_versions = previous.resource_versions[type_url] if previous is not None else {}
            versions = {
                name: old_versions[name] if old.get(name) is body else content_version(body)
                for name, body in bodies.items()
            }
            resources[type_url] = MappingProxyType(bodies)
            resource_versions[type_url] = MappingProxyType(versions)
            type_versions[type_url] = _type_version(versions)
            if previous is not None:
                for kind in ("sotw", "delta"):
                    fields = previous._encoded.get((kind, type_url))
                    if fields is not None:
                        inherited[(kind, type_url)] = (old, fields)  # type: ignore[assignment]
        if previous is not None and ("eds-name", CLUSTER) in previous._encoded:
            known: Mapping[str, str] = previous._encoded[("eds-name", CLUSTER)]  # type: ignore[assignment]
            old, new = previous.resources[CLUSTER], resources[CLUSTER]
            encoded[("eds-name", CLUSTER)] = (
                dict(known)
                if old is new
                else {n: e for n, e in known.items() if new.get(n) is old.get(n)}
            )
        object.__setattr__(self, "resources", MappingProxyType(resources))
        object.__setattr__(self, "resource_versions", MappingProxyType(resource_versions))
        object.__setattr__(self, "type_versions", MappingProxyType(type_versions))
        object.__setattr__(self, "_encoded", encoded)
        object.__setattr__(self, "_inherited", inherited)
        object.__setattr__(self, "_given", given)

    def _reuse(self, kind: str, type_url: str) -> Callable[[str, bytes], bytes | None]:
        """Look up an encoding of the previous snapshot for an identical resource."""
        old_bodies, old_fields = self._inherited.pop((kind, type_url), ({}, {}))

        def lookup(name: str, body: bytes) -> bytes | None:
            return old_fields.get(name) if old_bodies.get(name) is body else None

        return lookup

    def names(self, type_url: str) -> Mapping[str, str]:
        """Resource name → version for one type."""
        return self.resource_versions[type_url]

    def sotw_fields(self, type_url: str) -> Mapping[str, bytes]:
        """Each resource as an encoded `DiscoveryResponse.resources` field."""
        key = ("sotw", type_url)
        cached = self._encoded.get(key)
        if cached is None:
            reuse = self._reuse("sotw", type_url)
            cached = {
                name: reuse(name, body) or _field(_RESP_RESOURCES, _any(type_url, body))
                for name, body in self.resources[type_url].items()
            }
            self._encoded[key] = cached
        return cached  # type: ignore[return-value]

    def sotw_all(self, type_url: str) -> bytes:
        """Every resource of a type, encoded as `DiscoveryResponse.resources` fields."""
        key = ("sotw-all", type_url)
        cached = self._encoded.get(key)
        if cached is None:
            cached = b"".join(self.sotw_fields(type_url).values())
            self._encoded[key] = cached
        return cached  # type: ignore[return-value]

    def delta_fields(self, type_url: str) -> Mapping[str, bytes]:
        """Each resource as an encoded `DeltaDiscoveryResponse.resources` field."""
        key = ("delta", type_url)
        cached = self._encoded.get(key)
        if cached is None:
            versions = self.resource_versions[type_url]
            reuse = self._reuse("delta", type_url)
            cached = {
                name: reuse(name, body)
                or _field(
                    _DELTA_RESOURCES,
                    b"".join(
                        (
                            _field(_RES_NAME, name.encode()),
                            _field(_RES_VERSION, versions[name].encode()),
                            _field(_RES_RESOURCE, _any(type_url, body)),
                        )
                    ),
                )
                for name, body in self.resources[type_url].items()
            }
            self._encoded[key] = cached
        return cached  # type: ignore[return-value]

    def eds_names(self, clusters: Iterable[str]) -> set[str]:
        """The endpoint (ClusterLoadAssignment) names that these clusters use (EDS
        clusters only)."""
        key = ("eds-name", CLUSTER)
        known: dict[str, str] = self._encoded.setdefault(key, {})  # type: ignore[assignment]
        bodies = self.resources[CLUSTER]
        out = set()
        for name in clusters:
            eds_name = known.get(name)
            if eds_name is None:
                eds_name = name
                body = bodies.get(name)
                if body is not None:
                    with contextlib.suppress(DecodeError):
                        cluster = cluster_pb2.Cluster.FromString(body)
                        service = cluster.eds_cluster_config.service_name
                        # A DNS-resolved cluster carries its endpoints inline.
                        is_eds = cluster.type == cluster_pb2.Cluster.EDS
                        eds_name = (service or name) if is_eds else ""
                known[name] = eds_name
            if eds_name:
                out.add(eds_name)
        return out


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
