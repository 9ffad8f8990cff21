"""Knative networking's `config-network`: the keys that shape what a gateway serves.

Defaults, key names (current and legacy) and validation follow
`knative.dev/networking/pkg/config`: the domain template must render a host with no
path for a sample route, the tag template must render, `http-protocol` is Enabled,
Redirected or Disabled (case-insensitive; Disabled is deprecated in Knative and serves
like Enabled), a negative `rollout-duration` is refused. Keys that Knative reads but
that change nothing in local mode (ingress and certificate classes, TLS automation,
mesh settings, rollout) are validated the same way and reported by `no_effect`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from wakegate.ingress.configmap import ConfigError, DataReader
from wakegate.ingress.go_template import Template, TemplateError, parse_template

NAME = "config-network"
DEFAULT_DOMAIN_TEMPLATE = "{{.Name}}.{{.Namespace}}.{{.Domain}}"
DEFAULT_TAG_TEMPLATE = "{{.Tag}}-{{.Name}}"
HTTP_ENABLED, HTTP_REDIRECTED, HTTP_DISABLED = "Enabled", "Redirected", "Disabled"

_DOMAIN_FIELDS = ("Name", "Namespace", "Domain")
_DOMAIN_MAPS = ("Annotations", "Labels")
_TAG_FIELDS = ("Name", "Tag")

_NO_EFFECT = {
    "ingress-class": ("ingress-class", "ingress.class"),
    "certificate-class": ("certificate-class", "certificate.class"),
    "external-domain-tls": ("autoTLS", "auto-tls", "external-domain-tls"),
    "cluster-local-domain-tls": ("cluster-local-domain-tls",),
    "system-internal-tls": ("system-internal-tls",),
    "internal-encryption": ("internal-encryption",),
    "autocreate-cluster-domain-claims": ("autocreate-cluster-domain-claims",),
    "enable-mesh-pod-addressability": ("enable-mesh-pod-addressability",),
    "mesh-compatibility-mode": ("mesh-compatibility-mode",),
    "namespace-wildcard-cert-selector": ("namespace-wildcard-cert-selector",),
    "rollout-duration": ("rollout-duration",),
}


def domain_template(source: str) -> Template:
    return parse_template(source, _DOMAIN_FIELDS, _DOMAIN_MAPS)


def tag_template(source: str) -> Template:
    return parse_template(source, _TAG_FIELDS)


DEFAULT_DOMAIN = domain_template(DEFAULT_DOMAIN_TEMPLATE)
DEFAULT_TAG = tag_template(DEFAULT_TAG_TEMPLATE)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    domain_template: Template = DEFAULT_DOMAIN
    tag_template: Template = DEFAULT_TAG
    http_protocol: str = HTTP_ENABLED
    default_external_scheme: str = "http"
    no_effect: tuple[str, ...] = field(default=(), compare=False)
    """Keys set that Knative reads but local mode does not act on."""

    def host(
        self,
        name: str,
        namespace: str,
        domain: str,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        return self.domain_template.render(
            {
                "Name": name,
                "Namespace": namespace,
                "Domain": domain,
                "Annotations": annotations or {},
                "Labels": labels or {},
            }
        )

    def tag_host_name(self, name: str, tag: str) -> str:
        """The name a tag's host is built from (Knative's HostnameFromTemplate)."""
        return self.tag_template.render({"Name": name, "Tag": tag}) if tag else name


DEFAULT_NETWORK = NetworkConfig()


def network_config(data: Mapping[str, str]) -> tuple[NetworkConfig, list[str]]:
    """`config-network` data → (config, unknown keys); ConfigError names the bad key."""
    reader = DataReader(NAME, data)
    found = reader.raw("domain-template")
    domain = DEFAULT_DOMAIN
    if found is not None:
        domain = _checked_domain(reader, found[1])
    found = reader.raw("tag-template")
    tag = DEFAULT_TAG
    if found is not None:
        try:
            tag = tag_template(found[1])
        except TemplateError as exc:
            raise ConfigError(f"{NAME}: tag-template: {exc}") from None
    protocol = reader.choice(
        HTTP_ENABLED,
        (HTTP_ENABLED, HTTP_REDIRECTED, HTTP_DISABLED),
        "httpProtocol",
        "http-protocol",
    )
    scheme = reader.choice(
        "http", ("http", "https"), "defaultExternalScheme", "default-external-scheme"
    )
    no_effect = []
    for name, keys in _NO_EFFECT.items():
        if reader.raw(*keys) is None:
            continue
        no_effect.append(name)
    reader.integer(0, "rollout-duration", low=0)
    for key in ("autocreate-cluster-domain-claims", "enable-mesh-pod-addressability"):
        reader.boolean(False, key)
    reader.boolean(False, "internal-encryption")
    reader.choice("disabled", ("enabled", "disabled"), "autoTLS", "auto-tls", "external-domain-tls")
    for key in ("cluster-local-domain-tls", "system-internal-tls"):
        reader.choice("disabled", ("enabled", "disabled"), key)
    reader.choice("auto", ("enabled", "disabled", "auto"), "mesh-compatibility-mode")
    config = NetworkConfig(domain, tag, protocol, scheme, tuple(no_effect))
    return config, reader.unread()


def _checked_domain(reader: DataReader, source: str) -> Template:
    """Knative's check: the template renders, for a sample route, a host and no path."""
    try:
        template = domain_template(source)
    except TemplateError as exc:
        raise ConfigError(f"{NAME}: domain-template: {exc}") from None
    sample = template.render({"Name": "foo", "Namespace": "bar", "Domain": "baz.com"})
    parts = urlsplit("https://" + sample)
    if not parts.hostname:
        raise reader.fail("domain-template", source, "a template that renders a host name")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise reader.fail("domain-template", source, "a host name, without a path")
    return template
