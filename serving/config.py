"""Knative Serving's `config-defaults` as far as validation and defaulting need it."""

from __future__ import annotations

from dataclasses import dataclass, replace

DEFAULT_DOMAIN = "example.com"
"""`config-domain`'s default: a Service's host is `{name}.{namespace}.{domain}`."""
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """Knative's `config-defaults` (and the one `config-autoscaler` key validation needs)."""

    revision_timeout_s: int = 300
    max_revision_timeout_s: int = 600
    container_concurrency: int = 0
    container_concurrency_max: int = 1000
    allow_zero_initial_scale: bool = False


SERVING_CONFIG = ServingConfig()
"""Used when a caller passes no config; replace it to change the process-wide defaults."""


def admitted(config: ServingConfig | None = None) -> ServingConfig:
    """`config` for reading back objects that were validated when they were applied.

    A zero initial scale accepted while `allow_zero_initial_scale` was on stays readable
    once it is off; as in Knative, such a revision then runs at the global initial scale
    (see `RevisionScaling.from_spec`), and only a new apply is refused.
    """
    return replace(config or SERVING_CONFIG, allow_zero_initial_scale=True)
