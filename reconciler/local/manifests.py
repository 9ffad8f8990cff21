"""KIngress manifests applied locally (`wakegate apply` of KIngress, Endpoints, Secrets)
→ the control plane."""

from __future__ import annotations

from typing import Protocol

from wakegate.ingress.manifests import Manifests, ServiceEndpoints
from wakegate.ingress.model import Backend, Certificate, Ingress


class ManifestReconciler:
    """Holds what was applied from manifests and levels the control plane to it.

    Backends are recomputed from every applied ingress and every known Endpoints
    object on each apply, so the order in which documents arrive does not matter.
    """

    def __init__(self, control_plane: ControlPlaneState) -> None:
        self.control_plane = control_plane
        self.endpoints: dict[str, ServiceEndpoints] = {}

    def apply(self, manifests: Manifests) -> None:
        for ingress in manifests.ingresses:
            self.control_plane.apply_ingress(ingress)
        self.endpoints.update(manifests.endpoints)
        for key, cert in manifests.certificates.items():
            self.control_plane.set_certificate(key, cert)
        self.reconcile()

    def delete_ingress(self, key: str) -> bool:
        found = self.control_plane.delete_ingress(key)
        self.reconcile()
        return found

    def reconcile(self) -> None:
        resolved = Manifests(
            ingresses=self.control_plane.ingresses(), endpoints=self.endpoints
        ).backends()
        for key in set(self.control_plane.backend_keys()) - set(resolved):
            self.control_plane.delete_backend(key)
        for key, backend in resolved.items():
            self.control_plane.set_backend(key, backend)


class ControlPlaneState(Protocol):
    def apply_ingress(self, ingress: Ingress) -> None: ...
    def delete_ingress(self, key: str) -> bool: ...
    def ingresses(self) -> list[Ingress]: ...
    def set_backend(self, key: str, backend: Backend) -> None: ...
    def delete_backend(self, key: str) -> None: ...
    def backend_keys(self) -> list[str]: ...
    def set_certificate(self, key: str, certificate: Certificate) -> None: ...
