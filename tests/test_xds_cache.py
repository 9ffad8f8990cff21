"""Snapshots, their derived versions and wire encoding, and the per-group cache."""

from __future__ import annotations

import asyncio
import threading

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from wakegate.xds.cache import (
    Snapshot,
    SnapshotCache,
    encode_delta_response,
    encode_sotw_response,
)
from wakegate.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, content_version


def cluster(name: str, timeout: int = 1) -> bytes:
    message = cluster_pb2.Cluster(name=name)
    message.connect_timeout.seconds = timeout
    return message.SerializeToString()


def test_snapshot_derives_content_versions() -> None:
    a, b = cluster("a"), cluster("b")
    snap = Snapshot("1", {CLUSTER: {"a": a, "b": b}})
    assert snap.names(CLUSTER) == {"a": content_version(a), "b": content_version(b)}
    assert set(snap.resources) == {LISTENER, ROUTE, CLUSTER, ENDPOINT}
    assert snap.resources[ROUTE] == {}
    empty = Snapshot("0", {})
    assert snap.type_versions[ROUTE] == empty.type_versions[ROUTE]
    assert snap.type_versions[CLUSTER] != empty.type_versions[CLUSTER]

    same = Snapshot("2", {CLUSTER: {"b": b, "a": a}})
    assert same.type_versions == snap.type_versions  # independent of order and label
    changed = Snapshot("3", {CLUSTER: {"a": cluster("a", timeout=2), "b": b}})
    assert changed.type_versions[CLUSTER] != snap.type_versions[CLUSTER]
    assert changed.names(CLUSTER)["b"] == snap.names(CLUSTER)["b"]
    assert changed.type_versions[LISTENER] == snap.type_versions[LISTENER]
    renamed = Snapshot("4", {CLUSTER: {"a": a, "c": b}})
    assert renamed.type_versions[CLUSTER] != snap.type_versions[CLUSTER]


def test_snapshot_is_isolated_from_the_callers_dicts() -> None:
    bodies = {"a": cluster("a")}
    snap = Snapshot("1", {CLUSTER: bodies})
    bodies["b"] = cluster("b")
    assert set(snap.resources[CLUSTER]) == {"a"}
    with pytest.raises(TypeError):
        snap.resources[CLUSTER]["x"] = b""  # type: ignore[index]


def test_snapshot_rejects_unknown_types() -> None:
    with pytest.raises(ValueError, match="unknown resource type"):
        Snapshot("1", {"type.googleapis.com/envoy.Nope": {}})


def test_encoded_responses_parse_as_the_protos() -> None:
    bodies = {"a": cluster("a"), "b": cluster("b")}
    snap = Snapshot("7", {CLUSTER: bodies})
    raw = encode_sotw_response(
        type_url=CLUSTER, version="v", nonce="n1", resources=[snap.sotw_all(CLUSTER)]
    )
    response = discovery_pb2.DiscoveryResponse.FromString(raw)
    assert (response.version_info, response.type_url, response.nonce) == ("v", CLUSTER, "n1")
    assert [(r.type_url, r.value) for r in response.resources] == [
        (CLUSTER, bodies["a"]),
        (CLUSTER, bodies["b"]),
    ]
    assert cluster_pb2.Cluster.FromString(response.resources[1].value).name == "b"

    fields = snap.delta_fields(CLUSTER)
    raw = encode_delta_response(
        type_url=CLUSTER,
        system_version="7",
        nonce="n2",
        resources=[fields["b"]],
        removed=["gone", "also-gone"],
    )
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
    assert (delta.system_version_info, delta.type_url, delta.nonce) == ("7", CLUSTER, "n2")
    [resource] = delta.resources
    assert resource.name == "b"
    assert resource.version == snap.names(CLUSTER)["b"]
    assert (resource.resource.type_url, resource.resource.value) == (CLUSTER, bodies["b"])
    assert list(delta.removed_resources) == ["gone", "also-gone"]


def test_large_snapshot_encodes_every_resource() -> None:
    bodies = {f"c{i}": cluster(f"c{i}") for i in range(10_000)}
    snap = Snapshot("big", {CLUSTER: bodies})
    assert snap.sotw_all(CLUSTER) is snap.sotw_all(CLUSTER)  # encoded once, shared
    raw = encode_sotw_response(
        type_url=CLUSTER, version="v", nonce="1", resources=[snap.sotw_all(CLUSTER)]
    )
    response = discovery_pb2.DiscoveryResponse.FromString(raw)
    assert len(response.resources) == 10_000
    assert response.resources[9_999].value == bodies["c9999"]


def test_cache_keeps_one_current_snapshot_per_group() -> None:
    cache = SnapshotCache()
    assert cache.get_snapshot("a") is None
    one = Snapshot("1", {CLUSTER: {"x": cluster("x")}})
    two = Snapshot("2", {CLUSTER: {"y": cluster("y")}})
    other = Snapshot("1", {})
    cache.set_snapshot("a", one)
    cache.set_snapshot("b", other)
    cache.set_snapshot("a", two)
    assert cache.get_snapshot("a") is two
    assert cache.get_snapshot("b") is other
    assert cache.current("a") == (2, two)
    assert cache.sequence("a", "1") == 1
    assert cache.sequence("a", "2") == 2
    assert cache.sequence("b", "2") is None
    assert sorted(cache.groups()) == ["a", "b"]


def test_cache_refuses_a_reused_version() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("a", Snapshot("1", {CLUSTER: {"x": cluster("x")}}))
    # Setting the same content under the same version again is a no-op.
    cache.set_snapshot("a", Snapshot("1", {CLUSTER: {"x": cluster("x")}}))
    assert cache.current("a")[0] == 1  # type: ignore[index]
    with pytest.raises(ValueError, match="already used"):
        cache.set_snapshot("a", Snapshot("1", {CLUSTER: {"y": cluster("y")}}))
    cache.set_snapshot("a", Snapshot("2", {}))
    with pytest.raises(ValueError, match="already used"):
        cache.set_snapshot("a", Snapshot("1", {}))


async def test_watchers_are_woken_on_their_loop_until_cancelled() -> None:
    cache = SnapshotCache()
    woken: list[tuple[str, int]] = []
    loop_thread = threading.get_ident()
    cancel_a = cache.watch("a", lambda: woken.append(("a", threading.get_ident())))
    cache.watch("b", lambda: woken.append(("b", threading.get_ident())))
    cache.set_snapshot("a", Snapshot("1", {}))
    assert woken == [("a", loop_thread)]

    # From another thread the wake-up is handed to the watcher's event loop.
    thread = threading.Thread(target=cache.set_snapshot, args=("b", Snapshot("1", {})))
    thread.start()
    thread.join()
    for _ in range(100):
        if len(woken) == 2:
            break
        await asyncio.sleep(0.01)
    assert woken[1] == ("b", loop_thread)

    cancel_a()
    cache.set_snapshot("a", Snapshot("2", {}))
    await asyncio.sleep(0)
    assert len(woken) == 2


def test_snapshot_built_on_a_previous_one_matches_one_built_from_scratch() -> None:
    """Reusing unchanged resources' versions and encodings changes nothing observable."""
    clusters = {f"c{i}": cluster_pb2.Cluster(name=f"c{i}").SerializeToString() for i in range(50)}
    first = Snapshot("1", {CLUSTER: clusters, ROUTE: {"r": b"\x0a\x01r"}})
    for type_url in (CLUSTER, ROUTE):
        first.sotw_fields(type_url)
        first.delta_fields(type_url)
    changed = dict(clusters)
    changed["c7"] = cluster_pb2.Cluster(
        name="c7", type=cluster_pb2.Cluster.STATIC
    ).SerializeToString()
    del changed["c8"]
    changed["c99"] = cluster_pb2.Cluster(name="c99").SerializeToString()
    resources = {CLUSTER: changed, ROUTE: first.resources[ROUTE]}

    derived = Snapshot("2", resources, first)
    fresh = Snapshot("2", resources)
    assert derived.resource_versions[CLUSTER] == fresh.resource_versions[CLUSTER]
    assert derived.type_versions == fresh.type_versions
    assert derived.resource_versions[CLUSTER]["c7"] != first.resource_versions[CLUSTER]["c7"]
    for type_url in (CLUSTER, ROUTE, LISTENER, ENDPOINT):
        assert dict(derived.sotw_fields(type_url)) == dict(fresh.sotw_fields(type_url))
        assert dict(derived.delta_fields(type_url)) == dict(fresh.delta_fields(type_url))
        assert derived.sotw_all(type_url) == fresh.sotw_all(type_url)
    # Unchanged resources are not encoded again.
    assert derived.sotw_fields(CLUSTER)["c1"] is first.sotw_fields(CLUSTER)["c1"]
    assert derived.sotw_all(ROUTE) is first.sotw_all(ROUTE)
