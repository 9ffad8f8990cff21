"""The local stack's configuration: Knative's ConfigMaps over the stack's own defaults.

A Knative operator tunes the platform with the ConfigMaps of `knative-serving`; local
mode reads the ones that shape what it runs (`SUPPORTED`), each as the component that
owns it in Knative reads it. An applied ConfigMap replaces the one applied before under
its name, as `kubectl apply` does; keys it does not set fall back to the stack's
defaults (`Baseline`): Knative's own, except the seed-faithful target utilisation of
100 %, the `example.com` domain and what `wakegate up` was told (`--domain`,
`--allow-zero-initial-scale`). `resolve` turns the applied data into the settings the
reconciler, the routes and the autoscaler use, or raises `ConfigError` naming the
ConfigMap and key; unknown keys (Knative ignores them) and keys that change nothing for
local processes are returned as notes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from wakegate.autoscaler.config import (
    DEFAULT_CONFIG,
    DEPLOYMENT_NAME,
    AutoscalerConfig,
    autoscaler_config,
    deployment_config,
)
from wakegate.autoscaler.config import NAME as AUTOSCALER_NAME
from wakegate.ingress.configmap import (
    NAMESPACE,
    ConfigError,
    ConfigMap,
    parse_configmap,
)
from wakegate.ingress.documents import load_all
from wakegate.ingress.network_config import DEFAULT_NETWORK, network_config
from wakegate.ingress.network_config import NAME as NETWORK_NAME
from wakegate.reconciler.local.routes import RouteConfig
from wakegate.serving.config import (
    CLUSTER_DOMAIN,
    DEFAULT_DOMAIN,
    DEFAULTS_NAME,
    SERVING_CONFIG,
    ServingConfig,
    defaults_config,
)
from wakegate.serving.domains import NAME as DOMAIN_NAME
from wakegate.serving.domains import default_domains, domain_config
from wakegate.serving.features import DEFAULT_FEATURES, HONOURED, Features, features_config
from wakegate.serving.features import NAME as FEATURES_NAME

SUPPORTED = (
    AUTOSCALER_NAME,
    DEFAULTS_NAME,
    DEPLOYMENT_NAME,
    DOMAIN_NAME,
    FEATURES_NAME,
    NETWORK_NAME,
)
KNATIVE_TARGET_PERCENTAGE = 70.0
"""Knative's `container-concurrency-target-percentage`; wakegate's default is 100."""


@dataclass(frozen=True, slots=True)
class Baseline:
    """What the stack uses where no ConfigMap says otherwise."""

    serving: ServingConfig = SERVING_CONFIG
    autoscaler: AutoscalerConfig | None = DEFAULT_CONFIG
    """None: the stack runs no autoscaler (`config-autoscaler` is still validated)."""
    domain: str = DEFAULT_DOMAIN
    cluster_domain: str = CLUSTER_DOMAIN


@dataclass(frozen=True, slots=True)
class Settings:
    serving: ServingConfig
    autoscaler: AutoscalerConfig | None
    routes: RouteConfig
    features: Features
    data: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """The applied ConfigMaps' data, by name."""
    notes: tuple[str, ...] = ()
    """Keys ignored: unknown to Knative, or without effect on local processes."""


def resolve(baseline: Baseline, data: Mapping[str, Mapping[str, str]]) -> Settings:
    """The settings `data` (ConfigMap name → data) makes over `baseline`."""
    notes: list[str] = []

    def note(name: str, unknown: Iterable[str], no_effect: Iterable[str] = ()) -> None:
        notes.extend(f"{name}: {key}: unknown key, ignored" for key in unknown)
        notes.extend(f"{name}: {key}: has no effect in local mode" for key in no_effect)

    scaling = baseline.autoscaler or DEFAULT_CONFIG
    if AUTOSCALER_NAME in data:
        scaling, unknown = autoscaler_config(data[AUTOSCALER_NAME], scaling)
        note(AUTOSCALER_NAME, unknown)
    if DEPLOYMENT_NAME in data:
        scaling, unknown, no_effect = deployment_config(data[DEPLOYMENT_NAME], scaling)
        note(DEPLOYMENT_NAME, unknown, no_effect)
    serving = replace(
        baseline.serving,
        allow_zero_initial_scale=scaling.allow_zero_initial_scale,
        max_scale_limit=scaling.max_scale_limit,
    )
    if DEFAULTS_NAME in data:
        serving, unknown, no_effect = defaults_config(data[DEFAULTS_NAME], serving)
        note(DEFAULTS_NAME, unknown, no_effect)
    features = DEFAULT_FEATURES
    if FEATURES_NAME in data:
        features, unknown, no_effect = features_config(data[FEATURES_NAME])
        note(FEATURES_NAME, unknown, no_effect)
    network = DEFAULT_NETWORK
    if NETWORK_NAME in data:
        network, unknown = network_config(data[NETWORK_NAME])
        note(NETWORK_NAME, unknown, network.no_effect)
    domains = (
        domain_config(data[DOMAIN_NAME], baseline.cluster_domain)
        if DOMAIN_NAME in data
        else default_domains(baseline.domain, baseline.cluster_domain)
    )
    routes = RouteConfig(domains, network, features.tag_header_routing)
    autoscaler = scaling if baseline.autoscaler is not None else None
    return Settings(serving, autoscaler, routes, features, dict(data), tuple(notes))


def configmaps_in(documents: Sequence[object]) -> tuple[list[ConfigMap], list[object]]:
    """The ConfigMaps among parsed YAML documents, and the documents with each of them
    replaced by None (so the others keep their document index); ConfigError for a
    ConfigMap wakegate does not read."""
    found: list[ConfigMap] = []
    rest: list[object] = []
    for index, document in enumerate(documents):
        if not (isinstance(document, Mapping) and document.get("kind") == "ConfigMap"):
            rest.append(document)
            continue
        try:
            configmap = parse_configmap(document)
        except ConfigError as exc:
            raise ConfigError(f"document {index}: {exc}") from None
        where = f"document {index}: ConfigMap {configmap.key}"
        if configmap.namespace != NAMESPACE:
            raise ConfigError(f"{where}: expected namespace {NAMESPACE}, where Knative's are")
        if configmap.name not in SUPPORTED:
            raise ConfigError(
                f"{where}: not a ConfigMap wakegate reads, expected one of {', '.join(SUPPORTED)}"
            )
        if any(c.name == configmap.name for c in found):
            raise ConfigError(f"{where}: given twice")
        found.append(configmap)
        rest.append(None)
    return found, rest


def split_configmaps(text: str) -> tuple[list[ConfigMap], str | None]:
    """`configmaps_in` for a multi-document YAML text: the ConfigMaps, and the text of
    the other documents (None when there are none). Text that is not YAML is returned
    whole, for the Service or KIngress parser to report."""
    try:
        documents = list(load_all(text))
    except yaml.YAMLError:
        return [], text
    found, rest = configmaps_in(documents)
    if not found:
        return [], text
    if all(document is None for document in rest):
        return found, None
    return found, yaml.safe_dump_all(rest, sort_keys=False)


# --- what `wakegate get config` shows ---------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _number(value: float) -> str:
    return f"{value:g}"


_Getter = Callable[[Settings], str]
_AUTOSCALER_KEYS: dict[str, tuple[Callable[[AutoscalerConfig], str], str]] = {
    "container-concurrency-target-default": (
        lambda c: _number(c.container_concurrency_target_default),
        "100",
    ),
    "container-concurrency-target-percentage": (
        lambda c: _number(c.container_concurrency_target_percentage),
        _number(KNATIVE_TARGET_PERCENTAGE),
    ),
    "requests-per-second-target-default": (
        lambda c: _number(c.requests_per_second_target_default),
        "200",
    ),
    "target-burst-capacity": (lambda c: _number(c.target_burst_capacity), "211"),
    "stable-window": (lambda c: _seconds(c.stable_window_s), "60s"),
    "panic-window-percentage": (lambda c: _number(c.panic_window_percentage), "10"),
    "panic-threshold-percentage": (lambda c: _number(c.panic_threshold_percentage), "200"),
    "max-scale-up-rate": (lambda c: _number(c.max_scale_up_rate), "1000"),
    "max-scale-down-rate": (lambda c: _number(c.max_scale_down_rate), "2"),
    "enable-scale-to-zero": (lambda c: _flag(c.enable_scale_to_zero), "true"),
    "scale-to-zero-grace-period": (lambda c: _seconds(c.scale_to_zero_grace_period_s), "30s"),
    "scale-to-zero-pod-retention-period": (
        lambda c: _seconds(c.scale_to_zero_pod_retention_period_s),
        "0s",
    ),
    "scale-down-delay": (lambda c: _seconds(c.scale_down_delay_s), "0s"),
    "activator-capacity": (lambda c: _number(c.activator_capacity), "100"),
    "initial-scale": (lambda c: str(c.initial_scale), "1"),
    "allow-zero-initial-scale": (lambda c: _flag(c.allow_zero_initial_scale), "false"),
    "min-scale": (lambda c: str(c.min_scale), "0"),
    "max-scale": (lambda c: str(c.max_scale), "0"),
    "max-scale-limit": (lambda c: str(c.max_scale_limit), "0"),
}
"""Each `config-autoscaler` key: its value in a config, and Knative's default."""

_DEFAULTS_KEYS: dict[str, tuple[Callable[[ServingConfig], str], str]] = {
    "revision-timeout-seconds": (lambda c: str(c.revision_timeout_s), "300"),
    "max-revision-timeout-seconds": (lambda c: str(c.max_revision_timeout_s), "600"),
    "container-concurrency": (lambda c: str(c.container_concurrency), "0"),
    "container-concurrency-max-limit": (lambda c: str(c.container_concurrency_max), "1000"),
    "allow-container-concurrency-zero": (
        lambda c: _flag(c.allow_container_concurrency_zero),
        "true",
    ),
}


def rows(settings: Settings) -> list[dict[str, str]]:
    """Every key local mode acts on: its effective value and where it comes from
    (`ConfigMap` when the applied ConfigMap sets it, `default` when it is Knative's
    default, `wakegate` when it is the stack's own default or a `wakegate up` flag)."""
    out: list[dict[str, str]] = []

    def add(configmap: str, key: str, value: str, knative: str | None) -> None:
        applied = settings.data.get(configmap, {})
        if key in applied:
            source = "ConfigMap"
        elif knative is None or value == knative:
            source = "default"
        else:
            source = "wakegate"
        out.append(
            {
                "namespace": NAMESPACE,
                "name": configmap,
                "key": key,
                "value": value,
                "source": source,
            }
        )

    scaling = settings.autoscaler or DEFAULT_CONFIG
    for key, (get, knative) in _AUTOSCALER_KEYS.items():
        add(AUTOSCALER_NAME, key, get(scaling), knative)
    for key, (get_serving, knative) in _DEFAULTS_KEYS.items():
        add(DEFAULTS_NAME, key, get_serving(settings.serving), knative)
    add(DEPLOYMENT_NAME, "progress-deadline", _seconds(scaling.progress_deadline_s), "600s")
    domains = settings.routes.domains
    for rule in domains.rules:
        selector = (
            yaml.safe_dump({"selector": dict(rule.selector)}, default_flow_style=True).strip()
            if rule.selector
            else ""
        )
        applied = DOMAIN_NAME in settings.data
        out.append(
            {
                "namespace": NAMESPACE,
                "name": DOMAIN_NAME,
                "key": rule.domain,
                "value": selector,
                "source": "ConfigMap" if rule.domain in settings.data.get(DOMAIN_NAME, {})
                else ("default" if applied else "wakegate"),
            }
        )  # fmt: skip
    network = settings.routes.network
    add(NETWORK_NAME, "domain-template", network.domain_template.source, None)
    add(NETWORK_NAME, "tag-template", network.tag_template.source, None)
    add(NETWORK_NAME, "http-protocol", network.http_protocol, None)
    add(NETWORK_NAME, "default-external-scheme", network.default_external_scheme, None)
    flags = settings.features.flags
    for key in sorted(set(HONOURED) | set(settings.data.get(FEATURES_NAME, {}))):
        if key in flags:
            add(FEATURES_NAME, key, flags[key], None)
    return out


def configmap_objects(settings: Settings) -> list[dict[str, Any]]:
    """The effective configuration as `v1` ConfigMaps, one per supported name."""
    data: dict[str, dict[str, str]] = {name: {} for name in SUPPORTED}
    for row in rows(settings):
        data[row["name"]][row["key"]] = row["value"]
    return [ConfigMap(NAMESPACE, name, values).to_dict() for name, values in data.items()]
