"""Knative-shaped objects: a KIngress read and written back keeps its spec."""

from __future__ import annotations

from pathlib import Path

import yaml

from wakegate.ingress.manifests import load_manifests
from wakegate.ingress.objects import ingress_object
from wakegate.serving.objects import full_name, object_list

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
