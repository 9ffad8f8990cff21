"""Incremental translation: assembled bytes, reuse of unchanged work, equality with scratch."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2

from wakegate.ingress.model import (
    TLS,
    Backend,
    BackendRef,
    Certificate,
    Endpoint,
    HTTPOption,
    Ingress,
    Path,
    RoutingState,
    Rule,
    Split,
    Visibility,
)
from wakegate.xds import resources
from wakegate.xds import translate as translate_module
from wakegate.xds.clusters import ClusterEncoder, build_cluster
from wakegate.xds.endpoints import build_load_assignment, encode_endpoints, load_assignment_bytes
from wakegate.xds.routes import (
    route_configuration,
    route_configuration_bytes,
    rule_virtual_host,
    virtual_host_entry,
)
from wakegate.xds.translate import GatewayConfig, Translator, translate


def ingress(i: int, generation: int = 0, host: str | None = None) -> Ingress:
    first = 50 + 10 * (generation % 5)
    splits = tuple(
        Split(
            BackendRef("default", f"svc-{i}-0000{r}", 80),
            first if r == 1 else 100 - first,
            (("Knative-Serving-Namespace", "default"), ("Knative-Serving-Revision", f"r{r}")),
        )
        for r in (1, 2)
    )
    return Ingress(
        "default",
        f"svc-{i:04d}",
        (Rule((host or f"svc-{i}.default.example.com",), (Path(splits=splits),)),),
        generation=generation,
    )


def state(n: int) -> RoutingState:
    ingresses = tuple(ingress(i) for i in range(n))
    backends = {
        split.backend.key: Backend((Endpoint("127.0.0.1", 9000 + i),))
        for i, ing in enumerate(ingresses)
        for split in ing.rules[0].paths[0].splits
    }
    return RoutingState(ingresses=ingresses, backends=backends)


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    calls: list[Any] = []
    original: Callable[..., Any] = getattr(translate_module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(translate_module, name, wrapper)
    return calls


# ---- wire-format assembly ---------------------------------------------------------------


def test_concatenated_route_configuration_equals_the_built_message() -> None:
    ingresses = [ingress(i) for i in range(50)]
    vhosts = [rule_virtual_host(ing, 0, default_timeout_s=300) for ing in ingresses]
    whole = route_configuration("http", vhosts)
    entries = [virtual_host_entry(v.SerializeToString()) for v in vhosts]
    assembled = route_configuration_bytes("http", entries)
    assert route_pb2.RouteConfiguration.FromString(assembled) == whole
    assert assembled == whole.SerializeToString(deterministic=True)
    assert route_configuration_bytes("internal", []) == (
        route_configuration("internal", []).SerializeToString()
    )


def test_encoded_cluster_equals_the_built_message() -> None:
    encoder = ClusterEncoder(connect_timeout_s=2.5, max_requests=500)
    for http2 in (False, True):
        name = "default/" + "long-name-" * 20 + ":h2c"
        built = build_cluster(name, http2=http2, connect_timeout_s=2.5, max_requests=500)
        assert cluster_pb2.Cluster.FromString(encoder.encode(name, http2)) == built


def test_encoded_load_assignment_equals_the_built_message() -> None:
    backend = Backend(tuple(Endpoint(f"10.0.{i // 250}.{i % 250}", 8000 + i) for i in range(300)))
    for value in (backend, None):
        encoded = load_assignment_bytes("ns/name:80", encode_endpoints(value))
        parsed = endpoint_pb2.ClusterLoadAssignment.FromString(encoded)
        assert parsed == build_load_assignment("ns/name:80", value)


# ---- reuse ------------------------------------------------------------------------------


def test_one_change_rebuilds_only_that_ingress(monkeypatch: pytest.MonkeyPatch) -> None:
    translator = Translator()
    before_state = state(1000)
    before = translator.translate(before_state)
    calls = counting(monkeypatch, "rule_virtual_host")
    ingresses = list(before_state.ingresses)
    ingresses[417] = ingress(417, generation=1)
    after_state = replace(before_state, ingresses=tuple(ingresses))
    after = translator.translate(after_state)

    assert [args[0].key for args in calls] == ["default/svc-0417"]
    assert after[resources.CLUSTER] is before[resources.CLUSTER]
    assert after[resources.ENDPOINT] is before[resources.ENDPOINT]
    assert after[resources.LISTENER] == before[resources.LISTENER]
    assert after[resources.ROUTE]["http"] != before[resources.ROUTE]["http"]
    assert after == translate(after_state)


def test_equal_but_new_objects_are_not_rebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    translator = Translator()
    before = translator.translate(state(100))
    calls = counting(monkeypatch, "rule_virtual_host")
    after = translator.translate(state(100))
    assert calls == []
    assert after == before
    assert after[resources.ROUTE]["http"] is before[resources.ROUTE]["http"]


def test_backend_change_re_encodes_only_its_assignment() -> None:
    translator = Translator()
    st = state(200)
    before = translator.translate(st)
    backends = dict(st.backends)
    key = "default/svc-7-00001:80"
    backends[key] = Backend((Endpoint("10.1.1.1", 8012),), http2=True)
    after = translator.translate(replace(st, backends=backends))
    changed = [
        (type_url, name)
        for type_url, named in after.items()
        for name, body in named.items()
        if before[type_url].get(name) is not body
    ]
    assert sorted(changed) == [(resources.CLUSTER, key), (resources.ENDPOINT, key)]
    assert after == translate(replace(st, backends=backends))


def test_removed_ingress_releases_its_clusters() -> None:
    translator = Translator()
    st = state(10)
    translator.translate(st)
    out = translator.translate(replace(st, ingresses=st.ingresses[1:]))
    assert "default/svc-0-00001:80" not in out[resources.CLUSTER]
    assert "default/svc-0-00001:80" not in out[resources.ENDPOINT]
    assert out == translate(replace(st, ingresses=st.ingresses[1:]))


def test_removing_the_winner_hands_the_host_to_the_next_rule() -> None:
    first = ingress(1, host="shared.example.com")
    second = ingress(2, host="shared.example.com")
    translator = Translator()
    translator.translate(RoutingState(ingresses=(first, second)))
    assert set(translator.errors) == {"default/svc-0002"}
    out = translator.translate(RoutingState(ingresses=(second,)))
    config = route_pb2.RouteConfiguration.FromString(out[resources.ROUTE]["http"])
    assert [(v.name, list(v.domains)) for v in config.virtual_hosts] == [
        ("default/svc-0002/rules[0]", ["shared.example.com"])
    ]
    assert translator.errors == {}


# ---- any sequence of changes ends where a translation from scratch would ----------------


def _mutate(rng: random.Random, ingresses: dict[str, Ingress], n: int) -> None:
    i = rng.randrange(n)
    key = f"default/svc-{i:04d}"
    roll = rng.random()
    if roll < 0.2:
        ingresses.pop(key, None)
    elif roll < 0.45:
        host = rng.choice(["shared-a.example.com", "shared-b.example.com", None])
        ingresses[key] = ingress(i, generation=rng.randrange(5), host=host)
    elif roll < 0.6 and key in ingresses:
        ingresses[key] = replace(
            ingresses[key],
            tls=(TLS((f"svc-{i}.default.example.com",), "default", rng.choice(["c1", "c2"])),),
            http_option=rng.choice(list(HTTPOption)),
        )
    elif roll < 0.75 and key in ingresses:
        rule = ingresses[key].rules[0]
        ingresses[key] = replace(
            ingresses[key],
            rules=(replace(rule, visibility=rng.choice(list(Visibility))), rule),
        )
    else:
        ingresses[key] = ingress(i, generation=rng.randrange(5))


def _diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What changed from `before` to `after`, by key: the new value, or None."""
    changes: dict[str, Any] = {key: None for key in before if key not in after}
    changes.update((key, value) for key, value in after.items() if before.get(key) != value)
    return changes


def _apply(view: dict[str, dict[str, bytes]], changes: dict[str, dict[str, bytes | None]]):
    for type_url, named in changes.items():
        table = view.setdefault(type_url, {})
        for name, body in named.items():
            if body is None:
                del table[name]
            else:
                table[name] = body


def _plain(resources_: resources.Resources) -> dict[str, dict[str, bytes]]:
    return {t: dict(named) for t, named in resources_.items() if named}


@pytest.mark.parametrize("probes", [False, True], ids=["plain", "readiness-probes"])
@pytest.mark.parametrize("seed", range(4))
def test_random_changes_match_a_fresh_translation(seed: int, probes: bool) -> None:
    """Fed whole states (`translate`) or only what changed (`update`), the translator ends
    where a fresh one does, in both views; the delta view's changes, applied in order,
    rebuild it exactly."""
    rng = random.Random(seed)
    n = 30
    base = state(n)
    current = {ing.key: ing for ing in base.ingresses}
    certificates = {"default/c1": Certificate("C1", "K1")}
    config = GatewayConfig(https_redirect_port=8443, readiness_probes=probes)
    translator = Translator(config)
    fed = Translator(config)
    view: dict[str, dict[str, bytes]] = {}
    seen: tuple[dict[str, Ingress], dict[str, Backend], dict[str, Certificate] | None]
    seen = ({}, {}, None)
    for step in range(60):
        for _ in range(rng.randrange(1, 4)):
            _mutate(rng, current, n)
        if step % 7 == 3:
            certificates = {**certificates, "default/c2": Certificate(f"C{step}", "K")}
        backends = dict(base.backends)
        for key in rng.sample(sorted(backends), 3):
            backends[key] = Backend((Endpoint("10.9.9.9", step + 1),), http2=rng.random() < 0.5)
        ordered = sorted(current.values(), key=lambda ing: (ing.generation, ing.key))
        st = RoutingState(tuple(ordered), backends, certificates)
        fresh = Translator(config)
        expected = fresh.translate(st)
        assert translator.translate(st) == expected, f"step {step}"
        assert translator.errors == fresh.errors, f"step {step}"
        for key in current:
            assert translator.readiness(key) == fresh.readiness(key), f"step {step}"

        fed.update(
            ingresses=_diff(seen[0], current),
            backends=_diff(seen[1], backends),
            certificates=certificates if certificates is not seen[2] else None,
        )
        seen = (dict(current), backends, certificates)
        _apply(view, fed.take_changes())
        assert view == _plain(fresh.delta_resources()), f"step {step}"
        sotw = {t: expected[t] for t in (resources.LISTENER, resources.ROUTE)}
        assert {t: fed.sotw_resources()[t] for t in sotw} == sotw, f"step {step}"
        assert fed.errors == fresh.errors, f"step {step}"
        for key in current:
            assert fed.readiness(key) == fresh.readiness(key), f"step {step}"


def test_one_change_touches_one_scope() -> None:
    """Fed one changed ingress among a thousand, the delta view changes by one route
    configuration: the scope of the ingress's hosts' first label."""
    translator = Translator()
    st = state(1000)
    translator.update(
        ingresses={ing.key: ing for ing in st.ingresses}, backends=dict(st.backends)
    )
    first = translator.take_changes()
    assert len(first[resources.SCOPED_ROUTE]) == len(first[resources.ROUTE]) == 1000
    assert len(first[resources.CLUSTER]) == len(first[resources.ENDPOINT]) == 2000
    translator.update(ingresses={"default/svc-0417": ingress(417, generation=1)})
    changes = translator.take_changes()
    assert list(changes) == [resources.ROUTE]
    assert list(changes[resources.ROUTE]) == ["http/svc-417"]
    config = route_pb2.RouteConfiguration.FromString(changes[resources.ROUTE]["http/svc-417"])
    assert [list(v.domains) for v in config.virtual_hosts] == [["svc-417.default.example.com"]]
    # A new revision: its cluster and load assignment, then the old one's removal.
    moved = replace(ingress(417), rules=(replace(ingress(417).rules[0], paths=()),))
    translator.update(ingresses={"default/svc-0417": moved})
    changes = translator.take_changes()
    assert set(changes[resources.CLUSTER]) == {
        "default/svc-417-00001:80",
        "default/svc-417-00002:80",
    }
    assert set(changes[resources.CLUSTER].values()) == {None}
    translator.update(ingresses={"default/svc-0417": None})
    changes = translator.take_changes()
    assert changes == {
        resources.SCOPED_ROUTE: {"http/svc-417": None},
        resources.ROUTE: {"http/svc-417": None},
    }
