"""Knative Serving's `config-features`: feature flags, and the ones local mode honours.

Flags take Enabled, Disabled or Allowed (case-insensitive; `secure-pod-defaults` also
AllowRootBounded), as in Knative's `pkg/apis/config/features.go`. Knative silently keeps
the default for a value it does not recognise; here such a value is refused with the
key named, since a typo in a flag is otherwise invisible. Of the flags, local mode acts
on `tag-header-based-routing` (routes a request with `Knative-Serving-Tag: <tag>` on the
main host to that tag's revision); the pod-spec flags shape Kubernetes pods and have no
effect on local processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wakegate.ingress.configmap import DataReader

NAME = "config-features"
ENABLED, DISABLED, ALLOWED, ALLOW_ROOT_BOUNDED = (
    "Enabled",
    "Disabled",
    "Allowed",
    "AllowRootBounded",
)

_FLAGS = {
    "autodetect-http2": DISABLED,
    "multi-container": ENABLED,
    "multi-container-probing": DISABLED,
    "queueproxy.mount-podinfo": DISABLED,
    "queueproxy.resource-defaults": DISABLED,
    "tag-header-based-routing": DISABLED,
    "kubernetes.containerspec-addcapabilities": DISABLED,
    "kubernetes.podspec-affinity": DISABLED,
    "kubernetes.podspec-dnsconfig": DISABLED,
    "kubernetes.podspec-dnspolicy": DISABLED,
    "kubernetes.podspec-volumes-emptydir": ENABLED,
    "kubernetes.podspec-fieldref": DISABLED,
    "kubernetes.podspec-hostaliases": DISABLED,
    "kubernetes.podspec-hostipc": DISABLED,
    "kubernetes.podspec-hostnetwork": DISABLED,
    "kubernetes.podspec-hostpid": DISABLED,
    "kubernetes.podspec-volumes-hostpath": DISABLED,
    "kubernetes.podspec-volumes-csi": DISABLED,
    "kubernetes.podspec-init-containers": DISABLED,
    "kubernetes.podspec-volumes-mount-propagation": DISABLED,
    "kubernetes.podspec-nodeselector": DISABLED,
    "kubernetes.podspec-persistent-volume-claim": DISABLED,
    "kubernetes.podspec-persistent-volume-write": DISABLED,
    "kubernetes.podspec-priorityclassname": DISABLED,
    "kubernetes.podspec-runtimeclassname": DISABLED,
    "kubernetes.podspec-schedulername": DISABLED,
    "kubernetes.podspec-securitycontext": DISABLED,
    "kubernetes.podspec-shareprocessnamespace": DISABLED,
    "kubernetes.podspec-tolerations": DISABLED,
    "kubernetes.podspec-topologyspreadconstraints": DISABLED,
    "kubernetes.podspec-volumes-ephemeral": DISABLED,
    "kubernetes.podspec-volumes-image": DISABLED,
    "secure-pod-defaults": DISABLED,
}
"""Every flag Knative reads, with its default."""

HONOURED = frozenset({"tag-header-based-routing"})


@dataclass(frozen=True, slots=True)
class Features:
    flags: Mapping[str, str]
    """Flag → Enabled, Disabled, Allowed (or AllowRootBounded), every flag present."""

    @property
    def tag_header_routing(self) -> bool:
        return self.flags["tag-header-based-routing"] == ENABLED


DEFAULT_FEATURES = Features(dict(_FLAGS))


def features_config(data: Mapping[str, str]) -> tuple[Features, list[str], list[str]]:
    """`config-features` data → (features, unknown keys, flags set without effect here)."""
    reader = DataReader(NAME, data)
    flags: dict[str, str] = {}
    for key, default in _FLAGS.items():
        choices = [ENABLED, DISABLED, ALLOWED]
        if key == "secure-pod-defaults":
            choices = [DISABLED, ALLOW_ROOT_BOUNDED, ENABLED]
        flags[key] = reader.choice(default, choices, key)
    no_effect = sorted(key for key in data if key in _FLAGS and key not in HONOURED)
    return Features(flags), reader.unread(), no_effect
