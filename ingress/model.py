"""The internal routing model: Knative's KIngress, normalised and validated.

Both modes meet here. Local mode's reconciler produces these objects from Knative
Services; cluster mode reads them from KIngress objects. The xDS translator turns
them, plus the endpoints of the backends they name, into Envoy resources.

All types are frozen and hashable so a translator can cache what it built per value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Visibility(StrEnum):
    EXTERNAL_IP = "ExternalIP"
    CLUSTER_LOCAL = "ClusterLocal"


class HTTPOption(StrEnum):
    ENABLED = "Enabled"
    REDIRECTED = "Redirected"


Headers = tuple[tuple[str, str], ...]
"""An ordered, hashable header map: ((name, value), ...), names as given."""


@dataclass(frozen=True, slots=True)
class BackendRef:
    """A Kubernetes-style service port that a split sends traffic to."""

    namespace: str
    name: str
    port: int | str

    @property
    def key(self) -> str:
        """Stable name used for the Envoy cluster of this backend."""
        return f"{self.namespace}/{self.name}:{self.port}"


@dataclass(frozen=True, slots=True)
class Split:
    backend: BackendRef
    percent: int
    append_headers: Headers = ()


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int
    per_try_timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class Path:
    """One HTTP path of a rule: match (path prefix + exact headers) → splits."""

    splits: tuple[Split, ...]
    path: str = ""
    headers: Headers = ()
    """Exact-match request headers, all of which must be present."""
    rewrite_host: str = ""
    append_headers: Headers = ()
    timeout_s: float | None = None
    retry: Retry | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    hosts: tuple[str, ...]
    paths: tuple[Path, ...]
    visibility: Visibility = Visibility.EXTERNAL_IP


@dataclass(frozen=True, slots=True)
class TLS:
    """A certificate served for `hosts` (by SNI) on the external TLS listener."""

    hosts: tuple[str, ...]
    secret_namespace: str
    secret_name: str


@dataclass(frozen=True, slots=True)
class Ingress:
    namespace: str
    name: str
    rules: tuple[Rule, ...]
    tls: tuple[TLS, ...] = ()
    http_option: HTTPOption = HTTPOption.ENABLED
    generation: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class Backend:
    """Where a BackendRef's traffic goes right now, and how to speak to it."""

    endpoints: tuple[Endpoint, ...]
    http2: bool = False
    """Speak HTTP/2 (h2c) to the upstream: the port is named `h2c` or `grpc`."""
    dns: bool = False
    """The endpoints' addresses are DNS names the gateway resolves (a Service of type
    ExternalName), not addresses pushed as EDS."""


@dataclass(frozen=True, slots=True)
class Gate:
    """A revision whose pods take at most `container_concurrency` requests each.

    The gateway gives such a revision a cluster of its own behind a loopback-only
    listener (see `wakegate.xds.gate`), through which every request to its pods
    passes, from the gateway in serve mode and from the activator in proxy mode.
    """

    namespace: str
    revision: str
    endpoints: tuple[Endpoint, ...]
    """The revision's ready pods."""
    container_concurrency: int
    http2: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.revision}"


@dataclass(frozen=True, slots=True)
class Certificate:
    cert_chain_pem: str
    private_key_pem: str
    problem: str | None = None
    """Why the pair does not load (see `certificates.py`); such a pair is never sent
    to a gateway, and the ingresses naming it report this instead."""


@dataclass(frozen=True)
class RoutingState:
    """Everything the translator needs: the whole desired state, level-triggered."""

    ingresses: tuple[Ingress, ...] = ()
    backends: dict[str, Backend] = field(default_factory=dict)
    """BackendRef.key → Backend."""
    certificates: dict[str, Certificate] = field(default_factory=dict)
    """"namespace/name" of a secret → Certificate."""
    gates: dict[str, Gate] = field(default_factory=dict)
    """Gate.key → Gate: the revisions with a per-pod concurrency limit (local mode)."""
