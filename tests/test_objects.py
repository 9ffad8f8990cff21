"""Knative-shaped objects: a KIngress read and written back keeps its spec."""

from __future__ import annotations

from pathlib import Path

import yaml

from wakegate.ingress.manifests import load_manifests
from wakegate.ingress.objects import ingress_object
from wakegate.serving.manifests import load_services
from wakegate.serving.objects import RevisionState, full_name, object_list, revision_object
from wakegate.serving.revision import next_revision

EXAMPLE = Path(__file__).resolve().parents[1] / "examples/helloworld/ingress.yaml"


def test_a_kingress_round_trips_to_its_manifest_spec() -> None:
    text = EXAMPLE.read_text()
    source = next(d for d in yaml.safe_load_all(text) if d and d.get("kind") == "Ingress")
    (ingress,) = load_manifests(text).ingresses
    written = ingress_object(ingress)
    assert (written["apiVersion"], written["kind"]) == (source["apiVersion"], "Ingress")
    assert written["metadata"]["name"] == source["metadata"]["name"]
    assert written["spec"] == source["spec"]
    assert load_manifests(yaml.safe_dump(written)).ingresses == [ingress]


def test_names_and_lists_as_kubectl_prints_them() -> None:
    ksvc = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "a"}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a-00001-x"}}
    assert full_name(ksvc) == "service.serving.knative.dev/a"
    assert full_name(pod) == "pod/a-00001-x"
    listed = object_list([ksvc, pod])
    assert (listed["apiVersion"], listed["kind"], listed["items"]) == ("v1", "List", [ksvc, pod])


def _conditions(state: RevisionState) -> dict[str, tuple[str, str]]:
    seed = Path(__file__).resolve().parents[1] / "examples/helloworld/helloworld-go.yaml"
    (service,) = load_services(seed.read_text())
    revision = next_revision(service, [])
    assert revision is not None
    obj = revision_object(revision, state)
    assert (obj["kind"], obj["metadata"]["name"]) == ("Revision", "helloworld-go-00001")
    assert obj["metadata"]["labels"]["serving.knative.dev/service"] == "helloworld-go"
    return {c["type"]: (c["status"], c.get("reason", "")) for c in obj["status"]["conditions"]}


def test_revision_conditions_follow_knative() -> None:
    # Active as knative/serving pkg/reconciler/autoscaling/kpa computeActiveCondition
    # marks it; Ready from ResourcesAvailable and ContainerHealthy (revision lifecycle).
    assert _conditions(RevisionState(ready=True, desired=0, actual=0))["Active"] == (
        "False",
        "NoTraffic",
    )
    waking = _conditions(RevisionState(ready=True, desired=1, actual=0))
    assert waking["Active"] == ("Unknown", "Queued") and waking["Ready"] == ("True", "")
    serving = _conditions(RevisionState(ready=True, desired=2, actual=2))
    assert serving == {
        "Active": ("True", ""),
        "ContainerHealthy": ("True", ""),
        "Ready": ("True", ""),
        "ResourcesAvailable": ("True", ""),
    }
    deploying = _conditions(RevisionState(ready=False, desired=1, actual=0))
    assert deploying["Ready"] == ("Unknown", "Deploying")
    failed = _conditions(RevisionState(ready=False, failed="exited with code 1", actual=0))
    assert failed["Ready"] == ("False", "ContainerFailed")
