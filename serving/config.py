"""Knative Serving's `config-defaults` as far as validation and defaulting need it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from wakegate.ingress.configmap import ConfigError, DataReader
from wakegate.ingress.go_template import TemplateError, parse_template

DEFAULT_DOMAIN = "example.com"
"""`config-domain`'s default: a Service's host is `{name}.{namespace}.{domain}`."""
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """Knative's `config-defaults` (and the `config-autoscaler` keys validation needs)."""

    revision_timeout_s: int = 300
    max_revision_timeout_s: int = 600
    container_concurrency: int = 0
    container_concurrency_max: int = 1000
    allow_container_concurrency_zero: bool = True
    allow_zero_initial_scale: bool = False
    """`config-autoscaler`'s allow-zero-initial-scale, which validation needs."""
    max_scale_limit: int = 0
    """`config-autoscaler`'s max-scale-limit: when set, every revision's `max-scale`
    annotation must be within 1..limit."""


SERVING_CONFIG = ServingConfig()
"""Used when a caller passes no config; replace it to change the process-wide defaults."""


def admitted(config: ServingConfig | None = None) -> ServingConfig:
    """`config` for reading back objects that were validated when they were applied.

    The limits an object met when it was applied hold for it later, whatever the
    ConfigMaps say now: a zero initial scale accepted while `allow_zero_initial_scale`
    was on stays readable once it is off (as in Knative, such a revision then runs at
    the global initial scale, see `RevisionScaling.from_spec`), and so does a timeout,
    a container concurrency or a max-scale that a later config would refuse. Only a
    new apply is checked against the current config.
    """
    return replace(
        config or SERVING_CONFIG,
        allow_zero_initial_scale=True,
        allow_container_concurrency_zero=True,
        container_concurrency_max=_INT32_MAX,
        max_revision_timeout_s=_INT32_MAX,
        max_scale_limit=0,
    )


_INT32_MAX = 2**31 - 1
DEFAULTS_NAME = "config-defaults"
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$")
_META_FIELDS = ("Name", "Namespace", "GenerateName")
_DEFAULTS_NO_EFFECT = (
    "revision-response-start-timeout-seconds",
    "revision-idle-timeout-seconds",
    "container-name-template",
    "init-container-name-template",
    "enable-service-links",
    "revision-cpu-request",
    "revision-memory-request",
    "revision-ephemeral-storage-request",
    "revision-cpu-limit",
    "revision-memory-limit",
    "revision-ephemeral-storage-limit",
)


def defaults_config(
    data: Mapping[str, str], base: ServingConfig | None = None
) -> tuple[ServingConfig, list[str], list[str]]:
    """`config-defaults` data over `base` → (config, unknown keys, keys without effect here).

    Validation follows Knative's `NewDefaultsConfigFromMap`: the revision timeout at most
    the maximum, the container concurrency within 0 (1 when zero is not allowed) and
    `container-concurrency-max-limit`, which is at least 1. Keys that shape pods on a
    cluster (resources, container names, service links) are read but change nothing for
    local processes.
    """
    base = base or SERVING_CONFIG
    reader = DataReader(DEFAULTS_NAME, data)
    timeout = reader.integer(base.revision_timeout_s, "revision-timeout-seconds", low=1)
    maximum = reader.integer(base.max_revision_timeout_s, "max-revision-timeout-seconds", low=1)
    limit = reader.integer(
        base.container_concurrency_max, "container-concurrency-max-limit", low=1, high=2**31 - 1
    )
    allow_zero = reader.boolean(
        base.allow_container_concurrency_zero, "allow-container-concurrency-zero"
    )
    concurrency = reader.integer(
        base.container_concurrency, "container-concurrency", low=0, high=limit
    )
    if timeout > maximum:
        raise reader.fail(
            "revision-timeout-seconds",
            str(timeout),
            f"at most max-revision-timeout-seconds ({maximum})",
        )
    for key in ("revision-response-start-timeout-seconds", "revision-idle-timeout-seconds"):
        value = reader.integer(0, key, low=0)
        if value > timeout:
            raise reader.fail(key, str(value), f"at most revision-timeout-seconds ({timeout})")
    for key in ("container-name-template", "init-container-name-template"):
        found = reader.raw(key)
        if found is not None:
            try:
                parse_template(found[1], _META_FIELDS, ("Labels", "Annotations"))
            except TemplateError as exc:
                raise ConfigError(f"{DEFAULTS_NAME}: {key}: {exc}") from None
    for key in _DEFAULTS_NO_EFFECT:
        found = reader.raw(key)
        if found is not None and key.startswith("revision-") and key.endswith(("request", "limit")):
            if not _QUANTITY.match(found[1].strip()):
                raise reader.fail(key, found[1], "a Kubernetes quantity such as 100m or 128Mi")
    no_effect = [key for key in _DEFAULTS_NO_EFFECT if key in data]
    config = replace(
        base,
        revision_timeout_s=timeout,
        max_revision_timeout_s=maximum,
        container_concurrency=concurrency,
        container_concurrency_max=limit,
        allow_container_concurrency_zero=allow_zero,
    )
    return config, reader.unread(), no_effect
