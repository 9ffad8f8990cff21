"""Knative Serving's `config-domain`: which domain suffix each route's hosts get.

Each key is a domain; its value is empty (the default domain) or YAML with a `selector`
of labels. A route takes the domain whose selector matches its labels with the most
labels, ties going to the alphabetically first domain; a route labelled cluster-local
gets `svc.<cluster domain>` (Knative's `LookupDomainForLabels`). A ConfigMap without a
selector-less domain gets `svc.<cluster domain>` as its default, so such routes are
cluster-local, as in Knative.

Without a `config-domain`, wakegate serves under `example.com` (or `wakegate up
--domain`), where Knative would make every route cluster-local: the walkthrough curls
its Service through the external gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from wakegate.ingress.configmap import EXAMPLE_KEY, ConfigError
from wakegate.ingress.kube_values import DNS_SUBDOMAIN
from wakegate.serving.config import CLUSTER_DOMAIN, DEFAULT_DOMAIN
from wakegate.serving.model import CLUSTER_LOCAL, VISIBILITY_LABEL

NAME = "config-domain"


@dataclass(frozen=True, slots=True)
class DomainRule:
    domain: str
    selector: tuple[tuple[str, str], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.selector)


@dataclass(frozen=True, slots=True)
class DomainConfig:
    rules: tuple[DomainRule, ...]
    cluster_domain: str = CLUSTER_DOMAIN

    @property
    def cluster_local_domain(self) -> str:
        return f"svc.{self.cluster_domain}"

    def lookup(self, labels: Mapping[str, str]) -> str:
        """The domain for a route with these labels."""
        if labels.get(VISIBILITY_LABEL) == CLUSTER_LOCAL:
            return self.cluster_local_domain
        best, specificity = "", -1
        for rule in self.rules:
            if not rule.matches(labels) or len(rule.selector) < specificity:
                continue
            if len(rule.selector) > specificity or rule.domain < best:
                best, specificity = rule.domain, len(rule.selector)
        return best

    def is_cluster_local(self, domain: str) -> bool:
        return domain == self.cluster_local_domain


def default_domains(
    domain: str = DEFAULT_DOMAIN, cluster_domain: str = CLUSTER_DOMAIN
) -> DomainConfig:
    return DomainConfig((DomainRule(domain),), cluster_domain)


def domain_config(data: Mapping[str, str], cluster_domain: str = CLUSTER_DOMAIN) -> DomainConfig:
    """`config-domain` data → the domains; ConfigError names a bad key."""
    rules: list[DomainRule] = []
    has_default = False
    for domain, text in sorted(data.items()):
        if domain == EXAMPLE_KEY:
            continue
        where = f"{NAME}: {domain}"
        if len(domain) > 253 or not DNS_SUBDOMAIN.match(domain):
            raise ConfigError(f"{where}: expected a lowercase DNS domain as the key")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(
                f"{where}: malformed YAML, expected empty or selector: {{label: value}}"
            ) from None
        value = value or {}
        if not isinstance(value, Mapping) or set(value) - {"selector", "type"}:
            raise ConfigError(f"{where}: expected empty or selector: {{label: value}}")
        selector = value.get("selector") or {}
        if not isinstance(selector, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
        ):
            raise ConfigError(f"{where}: selector: expected labels as strings (quote them in YAML)")
        if not selector:
            has_default = True
        rules.append(DomainRule(domain, tuple(sorted(selector.items()))))
    if not has_default:
        rules.append(DomainRule(f"svc.{cluster_domain}"))
    return DomainConfig(tuple(rules), cluster_domain)
