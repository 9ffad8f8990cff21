"""The gate's resources in the control plane's snapshots: published as changes, in both
the delta view and the state-of-the-world variant, one gate's change touching only its
own resources."""

from __future__ import annotations

from wakegate.ingress.model import Endpoint, Gate
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.gate import GATE, gate_cluster_name
from wakegate.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from wakegate.xds.translate import GatewayConfig


def gate(revision: str, *ports: int, limit: int = 1) -> Gate:
    return Gate("default", revision, tuple(Endpoint("127.0.0.1", p) for p in ports), limit)


def control_plane() -> ControlPlane:
    cp = ControlPlane(GatewayConfig(gate_port=19999))
    cp.publish()
    return cp


def gate_names(cp: ControlPlane, type_url: str, *, sotw: bool = False) -> set[str]:
    snapshot = cp.cache.get_snapshot(cp.group)
    assert snapshot is not None
    resources = (snapshot.for_sotw() if sotw else snapshot).resources[type_url]
    return {name for name in resources if name.endswith(f":{GATE}")}


def test_a_gate_is_in_the_delta_view_and_the_sotw_variant() -> None:
    cp = control_plane()
    cp.set_gate(gate("r1", 1001))
    cp.publish()
    name = gate_cluster_name(gate("r1"))
    for sotw in (False, True):
        assert gate_names(cp, CLUSTER, sotw=sotw) == {name}
        assert gate_names(cp, ENDPOINT, sotw=sotw) == {name}
        snapshot = cp.cache.get_snapshot(cp.group)
        assert snapshot is not None
        view = snapshot.for_sotw() if sotw else snapshot
        assert GATE in view.resources[LISTENER] and GATE in view.resources[ROUTE]


def test_one_gates_endpoints_change_only_its_load_assignment() -> None:
    cp = control_plane()
    cp.set_gate(gate("r1", 1001))
    cp.set_gate(gate("r2", 2001))
    cp.publish()
    before = cp.cache.get_snapshot(cp.group)
    cp.set_gate(gate("r1", 1001, 1002))
    cp.publish()
    after = cp.cache.get_snapshot(cp.group)
    assert after is not None
    assert after.changed_since(before, ENDPOINT) == {gate_cluster_name(gate("r1"))}
    assert after.changed_since(before, CLUSTER) == set()
    assert after.changed_since(before, ROUTE) == set()


def test_a_new_limit_rebuilds_the_cluster_and_a_removed_gate_goes() -> None:
    cp = control_plane()
    cp.set_gate(gate("r1", 1001))
    cp.set_gate(gate("r2", 2001))
    cp.publish()
    before = cp.cache.get_snapshot(cp.group)
    cp.set_gate(gate("r1", 1001, limit=4))
    cp.delete_gate("default/r2")
    cp.publish()
    after = cp.cache.get_snapshot(cp.group)
    assert after is not None
    r1, r2 = gate_cluster_name(gate("r1")), gate_cluster_name(gate("r2"))
    assert after.changed_since(before, CLUSTER) == {r1, r2}
    assert gate_names(cp, CLUSTER) == gate_names(cp, CLUSTER, sotw=True) == {r1}
    assert gate_names(cp, ENDPOINT) == {r1}
    assert after.changed_since(before, ROUTE) == {GATE}, "the gate's routes lost r2"
