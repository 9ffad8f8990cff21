"""A Service's route → ingress rules, and the Service status built from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from wakegate.ingress.model import BackendRef, Ingress, Rule, Visibility
from wakegate.reconciler.local.routes import RouteConfig, route_ingress
from wakegate.serving.conditions import ConditionStatus
from wakegate.serving.domains import default_domains
from wakegate.serving.manifests import load_services
from wakegate.serving.model import Service
from wakegate.serving.revision import Revision, next_revision
from wakegate.serving.status import service_status
from wakegate.serving.validation import parse_service

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "helloworld" / "helloworld-go.yaml"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def service(
    traffic: list[dict[str, Any]] | None = None,
    env: str = "a",
    labels: dict[str, str] | None = None,
    timeout: int | None = None,
) -> Service:
    spec: dict[str, Any] = {
        "containers": [{"command": ["app"], "env": [{"name": "V", "value": env}]}]
    }
    if timeout is not None:
        spec["timeoutSeconds"] = timeout
    doc: dict[str, Any] = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": "demo", "labels": labels or {}},
        "spec": {"template": {"spec": spec}},
    }
    if traffic is not None:
        doc["spec"]["traffic"] = traffic
    return parse_service(doc)


def history(*versions: Service) -> list[Revision]:
    out: list[Revision] = []
    for version in versions:
        revision = next_revision(version, out, created_at=T0)
        assert revision is not None
        out.append(revision)
    return out


def rule(ingress: Ingress, host: str) -> Rule:
    (found,) = [r for r in ingress.rules if host in r.hosts]
    return found


def splits(ingress: Ingress, host: str, path: int = 0) -> list[tuple[str, int]]:
    return [(s.backend.name, s.percent) for s in rule(ingress, host).paths[path].splits]


def test_default_traffic_is_all_to_the_latest_ready_revision() -> None:
    revs = history(service(env="a"), service(env="b"))
    ingress, route = route_ingress(service(env="b"), revs)
    assert route.traffic_assigned
    assert (ingress.namespace, ingress.name) == ("demo", "hello")
    assert splits(ingress, "hello.demo.example.com") == [("hello-00002", 100)]
    (split,) = rule(ingress, "hello.demo.example.com").paths[0].splits
    assert split.backend == BackendRef("demo", "hello-00002", 80)
    assert dict(split.append_headers) == {
        "Knative-Serving-Namespace": "demo",
        "Knative-Serving-Revision": "hello-00002",
    }
    assert rule(ingress, "hello.demo.example.com").paths[0].timeout_s == 300.0
    assert [(t.revision_name, t.percent, t.latest_revision) for t in route.traffic] == [
        ("hello-00002", 100, True)
    ]
    assert route.url == "http://hello.demo.example.com"
    assert route.address_url == "http://hello.demo.svc.cluster.local"


def test_latest_revision_means_latest_ready() -> None:
    revs = history(service(env="a"), service(env="b"))
    ingress, route = route_ingress(service(env="b"), revs, ready={"hello-00001"})
    assert splits(ingress, "hello.demo.example.com") == [("hello-00001", 100)]
    assert route.traffic[0].revision_name == "hello-00001"


def test_every_service_has_cluster_local_hosts_and_one_external_host() -> None:
    ingress, _ = route_ingress(
        service(), history(service()), config=RouteConfig(default_domains("apps.test"))
    )
    assert [(r.visibility, r.hosts) for r in ingress.rules] == [
        (
            Visibility.CLUSTER_LOCAL,
            ("hello.demo", "hello.demo.svc", "hello.demo.svc.cluster.local"),
        ),
        (Visibility.EXTERNAL_IP, ("hello.demo.apps.test",)),
    ]


def test_fifty_fifty_split_across_two_revisions() -> None:
    revs = history(service(env="a"), service(env="b"))
    split = service(
        env="b",
        traffic=[
            {"revisionName": "hello-00001", "percent": 50},
            {"latestRevision": True, "percent": 50},
        ],
    )
    ingress, route = route_ingress(split, revs)
    expected = [("hello-00001", 50), ("hello-00002", 50)]
    assert splits(ingress, "hello.demo.example.com") == expected
    assert splits(ingress, "hello.demo.svc.cluster.local") == expected
    assert [(t.revision_name, t.percent, t.latest_revision) for t in route.traffic] == [
        ("hello-00001", 50, False),
        ("hello-00002", 50, True),
    ]


def test_targets_naming_the_same_revision_are_merged() -> None:
    revs = history(service())
    merged = service(
        traffic=[
            {"revisionName": "hello-00001", "percent": 30},
            {"revisionName": "hello-00001", "percent": 20},
            {"latestRevision": True, "percent": 50},
        ]
    )
    ingress, route = route_ingress(merged, revs)
    assert splits(ingress, "hello.demo.example.com") == [("hello-00001", 100)]
    assert [(t.revision_name, t.percent, t.latest_revision) for t in route.traffic] == [
        ("hello-00001", 50, False),
        ("hello-00001", 50, True),
    ]


def test_tags_get_their_own_hosts_routed_wholly_to_their_revision() -> None:
    revs = history(service(env="a"), service(env="b"))
    tagged = service(
        env="b",
        traffic=[
            {"revisionName": "hello-00001", "percent": 0, "tag": "old"},
            {"latestRevision": True, "percent": 100, "tag": "current"},
        ],
    )
    ingress, route = route_ingress(tagged, revs)
    assert splits(ingress, "hello.demo.example.com") == [("hello-00002", 100)]
    assert splits(ingress, "old-hello.demo.example.com") == [("hello-00001", 100)]
    assert splits(ingress, "current-hello.demo.example.com") == [("hello-00002", 100)]
    assert rule(ingress, "old-hello.demo.svc.cluster.local").visibility is Visibility.CLUSTER_LOCAL
    by_tag = {t.tag: t for t in route.traffic}
    assert by_tag["old"].url == "http://old-hello.demo.example.com"
    assert by_tag["old"].percent == 0
    assert by_tag["current"].url == "http://current-hello.demo.example.com"
    # No tag headers unless tag-header-based routing is on.
    for r in ingress.rules:
        for path in r.paths:
            assert not path.headers and not path.append_headers


def test_tag_header_based_routing() -> None:
    revs = history(service(env="a"), service(env="b"))
    tagged = service(
        env="b",
        traffic=[
            {"revisionName": "hello-00001", "percent": 0, "tag": "old"},
            {"latestRevision": True, "percent": 100},
        ],
    )
    ingress, _ = route_ingress(tagged, revs, config=RouteConfig(tag_header_routing=True))
    main = rule(ingress, "hello.demo.example.com")
    assert [p.headers for p in main.paths] == [(("Knative-Serving-Tag", "old"),), ()]
    assert [(s.backend.name, s.percent) for s in main.paths[0].splits] == [("hello-00001", 100)]
    assert main.paths[1].append_headers == (("Knative-Serving-Default-Route", "true"),)
    tag_rule = rule(ingress, "old-hello.demo.example.com")
    assert tag_rule.paths[0].append_headers == (("Knative-Serving-Tag", "old"),)


def test_cluster_local_label_keeps_the_service_off_the_external_listener() -> None:
    local = service(
        labels={"networking.knative.dev/visibility": "cluster-local"},
        traffic=[{"latestRevision": True, "percent": 100, "tag": "v"}],
    )
    ingress, route = route_ingress(local, history(local))
    assert ingress.rules
    assert {r.visibility for r in ingress.rules} == {Visibility.CLUSTER_LOCAL}
    assert not any(h.endswith(".example.com") for r in ingress.rules for h in r.hosts)
    assert "v-hello.demo.svc.cluster.local" in rule(ingress, "v-hello.demo").hosts
    assert route.url == "http://hello.demo.svc.cluster.local"
    assert route.traffic[0].url == "http://v-hello.demo.svc.cluster.local"


def test_timeout_comes_from_the_revisions_timeout_seconds() -> None:
    revs = history(service(env="a", timeout=30), service(env="b", timeout=120))
    both = service(
        env="b",
        timeout=120,
        traffic=[
            {"revisionName": "hello-00001", "percent": 50, "tag": "one"},
            {"latestRevision": True, "percent": 50},
        ],
    )
    ingress, _ = route_ingress(both, revs)
    assert rule(ingress, "hello.demo.example.com").paths[0].timeout_s == 120.0
    assert rule(ingress, "one-hello.demo.example.com").paths[0].timeout_s == 30.0


def test_unknown_revision_leaves_traffic_unassigned() -> None:
    pinned = service(traffic=[{"revisionName": "hello-00009", "percent": 100}])
    ingress, route = route_ingress(pinned, history(service()))
    assert not route.traffic_assigned
    assert route.condition.type == "RoutesReady"
    assert route.condition.status is ConditionStatus.FALSE
    assert route.condition.reason == "RevisionMissing"
    assert route.condition.message == 'Revision "hello-00009" referenced in traffic not found.'
    assert ingress.rules == ()
    assert route.traffic == ()


def test_no_ready_revision_yet_is_unknown_and_a_failure_is_false() -> None:
    revs = history(service())
    _, waiting = route_ingress(service(), revs, ready=set())
    assert waiting.condition.status is ConditionStatus.UNKNOWN
    assert waiting.condition.reason == "RevisionMissing"
    assert "waiting for a Revision to become ready" in waiting.condition.message
    _, failed = route_ingress(service(), revs, ready=set(), failed={"hello-00001"})
    assert failed.condition.status is ConditionStatus.FALSE
    assert "does not have any ready Revision" in failed.condition.message


def test_a_failure_outranks_a_wait() -> None:
    revs = history(service(env="a"), service(env="b"))
    mixed = service(
        env="b",
        traffic=[
            {"revisionName": "hello-00002", "percent": 50},
            {"revisionName": "hello-00001", "percent": 50},
        ],
    )
    _, route = route_ingress(mixed, revs, ready=set(), failed={"hello-00001"})
    assert route.condition.status is ConditionStatus.FALSE
    assert route.condition.message == 'Revision "hello-00001" failed to become ready.'


def test_helloworld_example_routes_on_its_host() -> None:
    (hello,) = load_services(EXAMPLE.read_text())
    revs = history(hello)
    ingress, route = route_ingress(hello, revs)
    assert splits(ingress, "helloworld-go.default.example.com") == [("helloworld-go-00001", 100)]
    assert route.url == "http://helloworld-go.default.example.com"
    assert revs[0].autoscaling.target == 10.0
    seed, _ = route_ingress(hello, revs, config=RouteConfig(default_domains("knative.kuberun.com")))
    assert rule(seed, "helloworld-go.default.knative.kuberun.com")


# --- Service status ------------------------------------------------------------------


def conditions(status: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["type"]: c for c in status["conditions"]}


def test_ready_service_status() -> None:
    svc = service(traffic=[{"latestRevision": True, "percent": 100, "tag": "now"}])
    revs = history(svc)
    _, route = route_ingress(svc, revs)
    status = service_status(svc, revs, route, now=T0, observed_generation=3)
    assert status["observedGeneration"] == 3
    assert status["url"] == "http://hello.demo.example.com"
    assert status["address"] == {"url": "http://hello.demo.svc.cluster.local"}
    assert status["latestCreatedRevisionName"] == "hello-00001"
    assert status["latestReadyRevisionName"] == "hello-00001"
    assert status["traffic"] == [
        {
            "revisionName": "hello-00001",
            "percent": 100,
            "latestRevision": True,
            "tag": "now",
            "url": "http://now-hello.demo.example.com",
        }
    ]
    assert [c["type"] for c in status["conditions"]] == [
        "ConfigurationsReady",
        "Ready",
        "RoutesReady",
    ]
    for condition in status["conditions"]:
        assert condition == {
            "type": condition["type"],
            "status": "True",
            "lastTransitionTime": "2024-05-01T12:00:00Z",
        }


def test_missing_revision_makes_the_service_not_ready() -> None:
    pinned = service(traffic=[{"revisionName": "hello-00009", "percent": 100}])
    revs = history(pinned)
    _, route = route_ingress(pinned, revs)
    status = conditions(service_status(pinned, revs, route, now=T0))
    assert status["ConfigurationsReady"]["status"] == "True"
    for kind in ("RoutesReady", "Ready"):
        assert status[kind]["status"] == "False"
        assert status[kind]["reason"] == "RevisionMissing"
        assert "hello-00009" in status[kind]["message"]


def test_deploying_and_failed_revisions() -> None:
    revs = history(service())
    _, route = route_ingress(service(), revs, ready=set())
    deploying = service_status(service(), revs, route, now=T0, ready=set())
    assert "latestReadyRevisionName" not in deploying
    assert conditions(deploying)["ConfigurationsReady"]["status"] == "Unknown"
    assert conditions(deploying)["Ready"]["status"] == "Unknown"

    failed = {"hello-00001": "container exited with code 1"}
    _, route = route_ingress(service(), revs, ready=set(), failed=failed)
    status = conditions(service_status(service(), revs, route, now=T0, ready=set(), failed=failed))
    assert status["ConfigurationsReady"]["reason"] == "RevisionFailed"
    assert status["ConfigurationsReady"]["message"] == (
        'Revision "hello-00001" failed with message: container exited with code 1.'
    )
    assert status["Ready"]["status"] == "False"
    assert status["Ready"]["reason"] == "RevisionFailed"


def test_routes_wait_for_the_gateways() -> None:
    revs = history(service())
    _, route = route_ingress(service(), revs)
    status = conditions(service_status(service(), revs, route, now=T0, ingress_ready=False))
    assert status["RoutesReady"]["status"] == "Unknown"
    assert status["RoutesReady"]["reason"] == "IngressNotConfigured"
    assert status["Ready"]["reason"] == "IngressNotConfigured"


def test_stale_route_is_traffic_not_migrated() -> None:
    revs = history(service(env="a"), service(env="b"))
    _, old_route = route_ingress(service(env="b"), revs, ready={"hello-00001"})
    status = conditions(service_status(service(env="b"), revs, old_route, now=T0))
    assert status["RoutesReady"]["reason"] == "TrafficNotMigrated"


def test_transition_time_is_kept_while_a_condition_is_unchanged() -> None:
    revs = history(service())
    _, route = route_ingress(service(), revs)
    first = service_status(service(), revs, route, now=T0, ingress_ready=False)
    later = T0 + timedelta(minutes=5)
    second = service_status(service(), revs, route, now=later, previous=first)
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["ConfigurationsReady"] == "2024-05-01T12:00:00Z"
    assert times["RoutesReady"] == "2024-05-01T12:05:00Z"
    assert times["Ready"] == "2024-05-01T12:05:00Z"


def test_previous_traffic_is_kept_while_the_route_cannot_be_programmed() -> None:
    revs = history(service())
    _, good = route_ingress(service(), revs)
    before = service_status(service(), revs, good, now=T0)
    broken = service(traffic=[{"revisionName": "hello-00009", "percent": 100}])
    _, bad = route_ingress(broken, revs)
    after = service_status(broken, revs, bad, now=T0, previous=before)
    assert after["traffic"] == before["traffic"]
    assert conditions(after)["Ready"]["status"] == "False"
