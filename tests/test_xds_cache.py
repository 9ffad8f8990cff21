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
from wakegate.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SCOPED_ROUTE,
    TYPES_IN_ORDER,
    content_version,
)


def cluster(name: str, timeout: int = 1) -> bytes:
    message = cluster_pb2.Cluster(name=name)
    message.connect_timeout.seconds = timeout
    return message.SerializeToString()


def test_snapshot_derives_content_versions() -> None:
    a, b = cluster("a"), cluster("b")
    snap = Snapshot("1", {CLUSTER: {"a": a, "b": b}})
    assert snap.names(CLUSTER) == {"a": content_version(a), "b": content_version(b)}
    assert set(snap.resources) == set(TYPES_IN_ORDER)
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


def test_evolve_applies_changes_and_matches_a_snapshot_built_in_full() -> None:
    clusters = {f"c{i}": cluster(f"c{i}") for i in range(20)}
    first = Snapshot("1", {CLUSTER: clusters, ROUTE: {"r": b"\x0a\x01r"}})
    second = first.evolve(
        "2", {CLUSTER: {"c3": cluster("c3", 7), "c4": None, "new": cluster("new")}}
    )
    expected = {**clusters, "c3": cluster("c3", 7), "new": cluster("new")}
    del expected["c4"]
    fresh = Snapshot("2", {CLUSTER: expected, ROUTE: {"r": b"\x0a\x01r"}})
    assert dict(second.resources[CLUSTER]) == expected
    assert dict(second.names(CLUSTER)) == dict(fresh.names(CLUSTER))
    assert second.type_versions == fresh.type_versions
    assert second.count(CLUSTER) == 20
    # The first snapshot still reads as it was built.
    assert dict(first.resources[CLUSTER]) == clusters
    assert "new" not in first.resources[CLUSTER] and "c4" in first.resources[CLUSTER]
    assert first.resources[CLUSTER]["c3"] == cluster("c3")
    # Unchanged types are shared, changed names are known.
    assert second.sotw_all(ROUTE) is first.sotw_all(ROUTE)
    assert second.changed_since(first, CLUSTER) == {"c3", "c4", "new"}
    assert second.changed_since(first, ROUTE) == set()
    assert first.changed_since(second, CLUSTER) is None, "only forwards along the chain"
    assert second.changed_since(fresh, CLUSTER) is None, "another chain"


def test_changes_accumulate_over_skipped_snapshots_and_no_ops_are_dropped() -> None:
    first = Snapshot("1", {CLUSTER: {"a": cluster("a"), "b": cluster("b")}})
    second = first.evolve("2", {CLUSTER: {"a": cluster("a", 2)}})
    third = second.evolve("3", {CLUSTER: {"b": None, "a": cluster("a", 2)}})
    assert third.changed_since(first, CLUSTER) == {"a", "b"}
    assert third.changed_since(second, CLUSTER) == {"b"}, "an equal body is no change"
    same = third.evolve("4", {CLUSTER: {"gone": None}, LISTENER: {}})
    assert same.changed_since(third, CLUSTER) == set()
    assert same.type_versions == third.type_versions


def test_a_chain_keeps_only_what_live_snapshots_see() -> None:
    """Old bodies and removed names are dropped once no snapshot can read them."""
    snap = Snapshot("0", {CLUSTER: {"keep": cluster("keep")}})
    table = snap._data[CLUSTER].table  # type: ignore[attr-defined]
    for i in range(1, 200):
        snap = snap.evolve(str(i), {CLUSTER: {"keep": cluster("keep", i), f"tmp{i}": None}})
        snap = snap.evolve(f"{i}b", {CLUSTER: {f"tmp{i + 1}": cluster("tmp")}})
    kept = table.entries["keep"]
    assert not isinstance(kept, list) or len(kept) <= 2
    assert len(table.entries) <= 4, sorted(table.entries)
    assert len(table.log) <= 2
    assert dict(snap.resources[CLUSTER]) == {"keep": cluster("keep", 199), "tmp200": cluster("tmp")}


def test_a_second_branch_from_one_snapshot_gets_its_own_table() -> None:
    base = Snapshot("1", {CLUSTER: {"a": cluster("a")}})
    left = base.evolve("2", {CLUSTER: {"b": cluster("b")}})
    right = base.evolve("3", {CLUSTER: {"c": cluster("c")}})
    assert set(left.resources[CLUSTER]) == {"a", "b"}
    assert set(right.resources[CLUSTER]) == {"a", "c"}
    assert set(base.resources[CLUSTER]) == {"a"}
    assert right.changed_since(left, CLUSTER) is None


def test_sotw_variant_replaces_some_types_and_shares_the_rest() -> None:
    calls = []

    def source() -> dict[str, dict[str, bytes]]:
        calls.append(1)
        return {ROUTE: {"full": b"\x0a\x04full"}, SCOPED_ROUTE: {}}

    snap = Snapshot(
        "1",
        {CLUSTER: {"a": cluster("a")}, ROUTE: {"part": b"\x0a\x04part"}, SCOPED_ROUTE: {"s": b""}},
        sotw=source,
    )
    variant = snap.for_sotw()
    assert variant is snap.for_sotw() and len(calls) == 1
    assert variant.version == snap.version
    assert set(variant.resources[ROUTE]) == {"full"}
    assert dict(variant.resources[SCOPED_ROUTE]) == {}
    assert variant.sotw_fields(CLUSTER)["a"] is snap.sotw_fields(CLUSTER)["a"]
    plain = Snapshot("2", {})
    assert plain.for_sotw() is plain
