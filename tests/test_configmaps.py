"""Knative's ConfigMaps read as Knative reads them (pure parsers).

Cases carry over from knative/networking `pkg/config/config_test.go` (TestConfiguration,
TestAnnotationsInDomainTemplate), knative/serving `pkg/apis/config/defaults_test.go`
(TestDefaultsConfiguration) and `pkg/reconciler/route/config/domain_test.go`
(TestLookupDomainForLabels, TestNewConfigNoEntry).
"""

from __future__ import annotations

import pytest

from wakegate.ingress.configmap import ConfigError, DataReader, parse_configmap
from wakegate.ingress.network_config import (
    HTTP_DISABLED,
    HTTP_ENABLED,
    HTTP_REDIRECTED,
    network_config,
)
from wakegate.serving.config import SERVING_CONFIG, defaults_config
from wakegate.serving.domains import DomainConfig, DomainRule, domain_config
from wakegate.serving.features import features_config

# --- config-network ---------------------------------------------------------------


def test_network_defaults_render_knative_hosts() -> None:
    config, unknown = network_config({})
    assert unknown == []
    assert config.host("foo", "bar", "baz.com") == "foo.bar.baz.com"
    assert config.tag_host_name("foo", "v2") == "v2-foo"
    assert config.tag_host_name("foo", "") == "foo"
    assert config.http_protocol == HTTP_ENABLED
    assert config.default_external_scheme == "http"


def test_network_non_default_domain_template() -> None:
    # TestConfiguration: "network configuration with diff domain template"
    config, _ = network_config({"domain-template": "{{.Namespace}}.{{.Name}}.{{.Domain}}"})
    assert config.host("foo", "bar", "baz.com") == "bar.foo.baz.com"


@pytest.mark.parametrize(
    ("template", "annotations", "want"),
    [
        # TestAnnotationsInDomainTemplate
        (
            '{{.Name}}.{{ index .Annotations "sub"}}.{{.Domain}}',
            {"sub": "sub1"},
            "foo.sub1.baz.com",
        ),
        ("{{.Name}}.{{.Namespace}}.{{.Domain}}", {}, "foo.bar.baz.com"),
    ],
)
def test_network_annotations_in_domain_template(
    template: str, annotations: dict[str, str], want: str
) -> None:
    config, _ = network_config({"domain-template": template})
    assert config.host("foo", "bar", "baz.com", annotations) == want


@pytest.mark.parametrize(
    ("data", "named"),
    [
        # TestConfiguration's error cases
        ({"domain-template": ""}, "domain-template"),  # blank domain template
        ({"domain-template": "{{.Namespace}.{{.Name}}.{{.Domain}}"}, "domain-template"),  # brace
        ({"domain-template": "{{.Domain}}/{{.Namespace}}/{{.Name}}."}, "domain-template"),  # path
        ({"domain-template": "{{.Name}}.{{.NAmespace}}.{{.Domain}}"}, "domain-template"),  # var
        ({"http-protocol": "under-the-bridge"}, "http-protocol"),  # HTTPProtocol bad
        ({"rollout-duration": "mil novecientos ochenta y dos"}, "rollout-duration"),
        ({"rollout-duration": "-444"}, "rollout-duration"),
        ({"autocreate-cluster-domain-claims": "salad"}, "autocreate-cluster-domain-claims"),
        ({"tag-template": "{{.Tag}}-{{.Nam}}"}, "tag-template"),
        ({"default-external-scheme": "ftp"}, "default-external-scheme"),
    ],
)
def test_network_bad_values_name_the_key(data: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        network_config(data)
    message = str(caught.value)
    assert message.startswith(f"config-network: {named}"), message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("Disabled", HTTP_DISABLED),  # TestConfiguration: HTTPProtocol disabled
        ("Redirected", HTTP_REDIRECTED),  # TestConfiguration: HTTPProtocol redirected
        ("redirected", HTTP_REDIRECTED),
        ("enabled", HTTP_ENABLED),
    ],
)
def test_network_http_protocol(value: str, want: str) -> None:
    config, _ = network_config({"http-protocol": value})
    assert config.http_protocol == want


def test_network_keys_without_local_effect_and_unknown_keys() -> None:
    config, unknown = network_config(
        {"ingress-class": "foo-ingress", "rollout-duration": "211", "domian-template": "x"}
    )
    assert config.no_effect == ("ingress-class", "rollout-duration")
    assert unknown == ["domian-template"]


def test_network_current_key_wins_over_legacy_one() -> None:
    config, _ = network_config({"httpProtocol": "Redirected", "http-protocol": "Enabled"})
    assert config.http_protocol == HTTP_ENABLED


# --- config-defaults --------------------------------------------------------------


def test_defaults_specified_values() -> None:
    # TestDefaultsConfiguration: "specified values"
    config, unknown, no_effect = defaults_config(
        {
            "revision-timeout-seconds": "123",
            "max-revision-timeout-seconds": "456",
            "revision-response-start-timeout-seconds": "60",
            "revision-idle-timeout-seconds": "123",
            "revision-cpu-request": "123m",
            "container-concurrency-max-limit": "1984",
            "container-name-template": "{{.Name}}",
            "init-container-name-template": "{{.Name}}",
            "allow-container-concurrency-zero": "false",
            "enable-service-links": "true",
        }
    )
    assert (config.revision_timeout_s, config.max_revision_timeout_s) == (123, 456)
    assert config.container_concurrency_max == 1984
    assert config.container_concurrency == 0
    assert config.allow_container_concurrency_zero is False
    assert unknown == []
    assert "revision-cpu-request" in no_effect and "enable-service-links" in no_effect


def test_defaults_default_configuration() -> None:
    config, unknown, no_effect = defaults_config({})
    assert config == SERVING_CONFIG
    assert (config.revision_timeout_s, config.max_revision_timeout_s) == (300, 600)
    assert (config.container_concurrency, config.container_concurrency_max) == (0, 1000)
    assert unknown == no_effect == []


@pytest.mark.parametrize(
    ("data", "named"),
    [
        # TestDefaultsConfiguration's error cases
        ({"allow-container-concurrency-zero": "invalid"}, "allow-container-concurrency-zero"),
        ({"revision-timeout-seconds": "asdf"}, "revision-timeout-seconds"),
        ({"max-revision-timeout-seconds": "asdf"}, "max-revision-timeout-seconds"),
        ({"revision-idle-timeout-seconds": "asdf"}, "revision-idle-timeout-seconds"),
        ({"container-name-template": "{{.NAme}}"}, "container-name-template"),
        ({"revision-cpu-request": "bad"}, "revision-cpu-request"),
        (
            {"revision-timeout-seconds": "456", "max-revision-timeout-seconds": "123"},
            "revision-timeout-seconds",
        ),
        (
            {"revision-timeout-seconds": "123", "revision-response-start-timeout-seconds": "456"},
            "revision-response-start-timeout-seconds",
        ),
        (
            {"revision-timeout-seconds": "123", "revision-idle-timeout-seconds": "456"},
            "revision-idle-timeout-seconds",
        ),
        ({"container-concurrency": "2000"}, "container-concurrency"),
        (
            {"container-concurrency": "11", "container-concurrency-max-limit": "10"},
            "container-concurrency",
        ),
        ({"container-concurrency-max-limit": "0"}, "container-concurrency-max-limit"),
    ],
)
def test_defaults_bad_values_name_the_key(data: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        defaults_config(data)
    assert str(caught.value).startswith(f"config-defaults: {named}: "), str(caught.value)


# --- config-domain ----------------------------------------------------------------


def test_lookup_domain_for_labels() -> None:
    # TestLookupDomainForLabels
    config = DomainConfig(
        (
            DomainRule("test-domain.foo.com", (("app", "foo"),)),
            DomainRule("foo.com", (("app", "foo"), ("version", "prod"))),
            DomainRule("bar.com", (("app", "bar"),)),
            DomainRule("default.com"),
        )
    )
    cases = [
        ({"app": "foo"}, "test-domain.foo.com"),
        ({"app": "foo", "version": "prod"}, "foo.com"),
        ({"app": "bar"}, "bar.com"),
        ({"app": "bar", "version": "whatever"}, "bar.com"),
        ({"app": "whatever"}, "default.com"),
        ({}, "default.com"),
        ({"networking.knative.dev/visibility": "cluster-local"}, "svc.cluster.local"),
    ]
    for labels, want in cases:
        assert config.lookup(labels) == want, labels


def test_domain_configmap_without_default_falls_back_to_cluster_local() -> None:
    # TestNewConfigNoEntry, and a ConfigMap whose every domain has a selector
    assert domain_config({}).lookup({}) == "svc.cluster.local"
    config = domain_config({"example.org": "selector:\n  app: nonprofit\n"})
    assert config.lookup({"app": "nonprofit"}) == "example.org"
    assert config.lookup({}) == "svc.cluster.local"
    assert config.is_cluster_local(config.lookup({}))


def test_domain_configmap_parses_selectors_and_the_example_key() -> None:
    config = domain_config(
        {
            "_example": "anything",
            "apps.test": "",
            "example.org": "selector:\n  app: nonprofit\n",
        }
    )
    assert config.lookup({}) == "apps.test"
    assert config.lookup({"app": "nonprofit"}) == "example.org"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"Apps.Test": ""}, "DNS domain"),
        ({"apps.test": "selector: [a]"}, "selector"),
        ({"apps.test": "selector: {app: 1}"}, "selector"),
        ({"apps.test": "selektor: {app: x}"}, "expected empty or selector"),
        ({"apps.test": "selector: {app"}, "malformed YAML"),
    ],
)
def test_domain_bad_values_name_the_key(data: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        domain_config(data)
    message = str(caught.value)
    assert message.startswith(f"config-domain: {next(iter(data))}: "), message
    assert problem in message


# --- config-features --------------------------------------------------------------


def test_features_tag_header_routing_and_flags_without_effect() -> None:
    features, unknown, no_effect = features_config(
        {"tag-header-based-routing": "enabled", "kubernetes.podspec-affinity": "Enabled"}
    )
    assert features.tag_header_routing
    assert unknown == []
    assert no_effect == ["kubernetes.podspec-affinity"]
    default, _, _ = features_config({})
    assert not default.tag_header_routing
    assert default.flags["multi-container"] == "Enabled"


def test_features_bad_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^config-features: tag-header-based-routing: "):
        features_config({"tag-header-based-routing": "yes"})


# --- the ConfigMap object and its data ---------------------------------------------


def test_configmap_object_shape() -> None:
    configmap = parse_configmap(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "config-domain", "namespace": "knative-serving"},
            "data": {"apps.test": ""},
        }
    )
    assert (configmap.namespace, configmap.name) == ("knative-serving", "config-domain")
    assert configmap.data == {"apps.test": ""}


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}, "apiVersion/kind"),
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}, "metadata.name"),
        (
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": 1}},
            "x: data[a]: got 1, expected a string",
        ),
        (
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "spec": {}},
            "spec: unknown field",
        ),
    ],
)
def test_configmap_object_errors(obj: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_configmap(obj)


def test_data_reader_reads_knative_value_forms() -> None:
    reader = DataReader(
        "config-x",
        {"b": "True", "i": " 12 ", "d": "1m30s", "z": "0s", "neg": "-1s", "n": "2.5", "other": ""},
    )
    assert reader.boolean(False, "b") is True
    assert reader.integer(0, "i", low=1) == 12
    assert reader.duration(0.0, "d") == 90.0
    assert reader.duration(5.0, "z") == 0.0
    assert reader.number(0.0, "n", low=0) == 2.5
    with pytest.raises(ConfigError, match=r"^config-x: neg: got \"-1s\", expected a duration"):
        reader.duration(0.0, "neg", low=0)
    assert reader.unread() == ["other"]
