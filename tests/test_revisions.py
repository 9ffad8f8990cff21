"""Template changes → Revisions, and a revision's autoscaling settings."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from wakegate.autoscaler.config import AutoscalerConfig, RevisionScaling
from wakegate.autoscaler.decider import Activity, DeciderState
from wakegate.serving import autoscaling
from wakegate.serving.autoscaling import AUTOSCALING_DEFAULTS, AutoscalingSpec, autoscaling_spec
from wakegate.serving.config import ServingConfig
from wakegate.serving.fields import ServiceError
from wakegate.serving.manifests import load_services
from wakegate.serving.revision import Revision, latest_created, latest_ready, next_revision
from wakegate.serving.validation import parse_service

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "helloworld" / "helloworld-go.yaml"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def manifest(
    name: str = "hello",
    env: str = "World",
    template_name: str | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"annotations": annotations or {}, "labels": labels or {}}
    if template_name:
        meta["name"] = template_name
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": meta,
                "spec": {
                    "containers": [
                        {"command": ["python3", "app.py"], "env": [{"name": "T", "value": env}]}
                    ],
                    **spec,
                },
            }
        },
    }


def apply(doc: dict[str, Any], existing: list[Revision]) -> Revision | None:
    return next_revision(parse_service(doc), existing, created_at=T0)


def test_first_revision_is_00001() -> None:
    revision = apply(manifest(), [])
    assert revision is not None
    assert (revision.namespace, revision.service) == ("default", "hello")
    assert (revision.name, revision.generation) == ("hello-00001", 1)
    assert revision.created_at == T0
    assert revision.template == parse_service(manifest()).template


def test_reapplying_the_same_manifest_creates_nothing() -> None:
    (service,) = load_services(EXAMPLE.read_text())
    first = next_revision(service, [])
    assert first is not None
    (again,) = load_services(EXAMPLE.read_text())
    assert next_revision(again, [first]) is None


def test_label_and_annotation_order_does_not_matter() -> None:
    first = apply(manifest(labels={"a": "1", "b": "2"}), [])
    assert first is not None
    assert apply(manifest(labels={"b": "2", "a": "1"}), [first]) is None


def test_each_template_change_increments_the_name() -> None:
    existing: list[Revision] = []
    for env, expected in [("a", "hello-00001"), ("b", "hello-00002"), ("a", "hello-00003")]:
        revision = apply(manifest(env=env), existing)
        assert revision is not None
        assert revision.name == expected
        existing.append(revision)
    assert [r.generation for r in existing] == [1, 2, 3]
    assert latest_created(existing) is existing[-1]


def test_a_change_outside_the_template_creates_no_revision() -> None:
    first = apply(manifest(), [])
    assert first is not None
    doc = manifest()
    doc["spec"]["traffic"] = [{"revisionName": "hello-00001", "percent": 100}]
    doc["metadata"]["labels"] = {"team": "x"}
    assert apply(doc, [first]) is None


def test_numbering_continues_past_the_highest_and_skips_taken_names() -> None:
    first = apply(manifest(env="a"), [])
    assert first is not None
    named = apply(manifest(env="b", template_name="hello-00003"), [first])
    assert named is not None and named.generation == 2
    third = apply(manifest(env="c"), [first, named])
    assert third is not None
    assert third.generation == 3
    assert third.name == "hello-00004"


def test_other_services_revisions_are_ignored() -> None:
    other = apply(manifest(name="other"), [])
    assert other is not None
    revision = apply(manifest(), [other])
    assert revision is not None and revision.name == "hello-00001"


def test_named_template_is_used_and_reapplying_it_is_a_no_op() -> None:
    revision = apply(manifest(template_name="hello-blue"), [])
    assert revision is not None and revision.name == "hello-blue"
    assert apply(manifest(template_name="hello-blue"), [revision]) is None


def test_changing_a_named_template_without_renaming_it_is_an_error() -> None:
    revision = apply(manifest(template_name="hello-blue"), [])
    assert revision is not None
    with pytest.raises(ServiceError) as caught:
        apply(manifest(template_name="hello-blue", env="changed"), [revision])
    assert str(caught.value).startswith("spec.template.metadata.name: ")
    assert '"hello-blue"' in str(caught.value)
    renamed = apply(manifest(template_name="hello-green", env="changed"), [revision])
    assert renamed is not None and (renamed.name, renamed.generation) == ("hello-green", 2)


def test_dropping_a_template_name_is_a_change() -> None:
    named = apply(manifest(template_name="hello-blue"), [])
    assert named is not None
    unnamed = apply(manifest(), [named])
    assert unnamed is not None and unnamed.name == "hello-00002"


def test_long_service_names_get_short_revision_names() -> None:
    name = "s" * 63
    revision = apply(manifest(name=name), [])
    assert revision is not None
    assert len(revision.name) == 63
    assert revision.name.endswith("-00001")
    second = apply(manifest(name=name, env="x"), [revision])
    assert second is not None and second.name != revision.name and len(second.name) == 63


def test_latest_ready_picks_the_newest_ready() -> None:
    existing: list[Revision] = []
    for env in "abc":
        revision = apply(manifest(env=env), existing)
        assert revision is not None
        existing.append(revision)
    assert latest_ready(existing, {"hello-00001", "hello-00002"}) is existing[1]
    assert latest_ready(existing, None) is existing[2]
    assert latest_ready(existing, set()) is None


def test_revision_round_trips_through_dict() -> None:
    revision = apply(manifest(annotations={"autoscaling.knative.dev/window": "10s"}), [])
    assert revision is not None
    assert Revision.from_dict(revision.to_dict()) == revision


def test_autoscaling_defaults() -> None:
    revision = apply(manifest(), [])
    assert revision is not None
    spec = revision.autoscaling
    assert spec == AutoscalingSpec(
        metric="concurrency",
        target=100.0,
        utilization=100.0,
        window_s=60.0,
        panic_window_pct=10.0,
        panic_threshold_pct=200.0,
        aggregation="linear",
        min_scale=0,
        max_scale=0,
        initial_scale=1,
        activation_scale=1,
        target_burst_capacity=211.0,
        scale_down_delay_s=0.0,
        pod_retention_s=0.0,
        progress_deadline_s=600.0,
        container_concurrency=0,
    )
    assert spec.panic_window_s == pytest.approx(6.0)
    assert spec.per_pod_target == pytest.approx(100.0)


def test_helloworld_targets_ten_per_pod() -> None:
    (service,) = load_services(EXAMPLE.read_text())
    spec = autoscaling_spec(service.template)
    assert spec.target == 10.0
    assert spec.per_pod_target == 10.0


def test_annotations_override_defaults() -> None:
    template = parse_service(
        manifest(
            annotations={
                "autoscaling.knative.dev/target": "20",
                "autoscaling.knative.dev/target-utilization-percentage": "70",
                "autoscaling.knative.dev/window": "2m",
                "autoscaling.knative.dev/panic-window-percentage": "20",
                "autoscaling.knative.dev/panic-threshold-percentage": "150",
                "autoscaling.knative.dev/minScale": "1",
                "autoscaling.knative.dev/max-scale": "5",
                "autoscaling.knative.dev/initial-scale": "2",
                "autoscaling.knative.dev/target-burst-capacity": "-1",
            }
        )
    ).template
    spec = autoscaling_spec(template)
    assert (spec.target, spec.utilization, spec.window_s) == (20.0, 70.0, 120.0)
    assert (spec.panic_window_pct, spec.panic_threshold_pct) == (20.0, 150.0)
    assert (spec.min_scale, spec.max_scale, spec.initial_scale) == (1, 5, 2)
    assert spec.target_burst_capacity == -1.0
    assert spec.per_pod_target == pytest.approx(14.0)
    assert spec.panic_window_s == pytest.approx(24.0)


def test_container_concurrency_sets_and_caps_the_target() -> None:
    limited = parse_service(manifest(containerConcurrency=4)).template
    assert autoscaling_spec(limited).target == 4.0
    assert autoscaling_spec(limited).container_concurrency == 4
    capped = parse_service(
        manifest(containerConcurrency=4, annotations={"autoscaling.knative.dev/target": "10"})
    ).template
    assert autoscaling_spec(capped).target == 4.0
    below = parse_service(
        manifest(containerConcurrency=4, annotations={"autoscaling.knative.dev/target": "2"})
    ).template
    assert autoscaling_spec(below).target == 2.0


def test_defaults_are_overridable(monkeypatch: pytest.MonkeyPatch) -> None:
    template = parse_service(
        manifest(annotations={"autoscaling.knative.dev/window": "30s"})
    ).template
    fast = replace(AUTOSCALING_DEFAULTS, window_s=6.0, target=1.0, utilization=70.0)
    spec = autoscaling_spec(template, fast)
    assert (spec.window_s, spec.target, spec.utilization) == (30.0, 1.0, 70.0)
    monkeypatch.setattr(autoscaling, "AUTOSCALING_DEFAULTS", fast)
    assert autoscaling_spec(template).target == 1.0
    assert autoscaling_spec(template).window_s == 30.0


ALLOW_ZERO = ServingConfig(allow_zero_initial_scale=True)


def zero_revision(**annotations: str) -> Revision:
    doc = manifest(annotations={"autoscaling.knative.dev/initial-scale": "0", **annotations})
    revision = next_revision(parse_service(doc, ALLOW_ZERO), [], created_at=T0)
    assert revision is not None
    return revision


def test_a_stored_zero_initial_scale_reads_back_once_no_longer_allowed() -> None:
    revision = zero_revision()
    assert autoscaling_spec(revision.template).initial_scale == 0
    assert Revision.from_dict(revision.to_dict()) == revision
    with pytest.raises(ServiceError, match=r"initial-scale\]: invalid value: 0"):
        parse_service(manifest(annotations={"autoscaling.knative.dev/initial-scale": "0"}))


@pytest.mark.parametrize(
    ("allow", "annotations", "initial", "pods"),
    [
        # Knative's GetInitialScale: a revision's 0 counts only while it is allowed,
        # otherwise the config's initial-scale applies.
        (True, {}, 0, 0),
        (False, {}, 1, 1),
        # activeThreshold: min-scale above the initial scale wins.
        (True, {"autoscaling.knative.dev/min-scale": "2"}, 0, 2),
        (
            True,
            {
                "autoscaling.knative.dev/min-scale": "2",
                "autoscaling.knative.dev/initial-scale": "3",
            },
            3,
            3,
        ),
    ],
    ids=["allowed", "not-allowed", "min-scale-wins", "initial-above-min"],
)
def test_initial_pods_follow_knative(
    allow: bool, annotations: dict[str, str], initial: int, pods: int
) -> None:
    revision = zero_revision(**annotations)
    config = AutoscalerConfig(allow_zero_initial_scale=allow)
    scaling = RevisionScaling.for_revision(revision, config)
    assert (scaling.initial_scale, scaling.initial_pods) == (initial, pods)
    state = DeciderState.start(scaling, 0.0)
    assert state.scale == pods
    assert state.activity is (Activity.INACTIVE if pods == 0 else Activity.ACTIVATING)


def test_initial_scale_three_starts_three_pods() -> None:
    revision = apply(manifest(annotations={"autoscaling.knative.dev/initial-scale": "3"}), [])
    assert revision is not None
    scaling = RevisionScaling.for_revision(revision)
    assert scaling.initial_pods == 3
    assert DeciderState.start(scaling, 0.0).scale == 3
