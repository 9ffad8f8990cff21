"""KIngress `status`: what one ingress's status should be, given what was observed.

Pure functions, no I/O. The condition set is knative.dev/networking's IngressStatus:
`NetworkConfigured` (the spec was translated into gateway config, every split naming
an existing Service port), `LoadBalancerReady`
(every gateway serves that config: each ready gateway pod answers its readiness probe,
or without probes each gateway connected to this replica ACKed it; and the endpoints
behind every split are known) and `Ready`, their
conjunction, which takes its reason and message from the first False condition, else
the first Unknown one. As in net-kourier, a served ingress gets the gateway Services'
DNS names as `publicLoadBalancer` and `privateLoadBalancer`. `lastTransitionTime` only
moves when a condition's status, reason or message changes, so rewriting an unchanged
status is a no-op that `same_status` detects.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NETWORK_CONFIGURED = "NetworkConfigured"
LOAD_BALANCER_READY = "LoadBalancerReady"
READY = "Ready"
CONDITION_TYPES = (LOAD_BALANCER_READY, NETWORK_CONFIGURED, READY)

INVALID = "InvalidIngress"
TRANSLATION_FAILED = "TranslationFailed"
BACKEND_NOT_FOUND = "BackendNotFound"
GATEWAY_REJECTED = "GatewayRejected"
UNINITIALIZED = "Uninitialized"
WAITING = "Waiting for load balancer to be ready"

Status = dict[str, Any]


@dataclass(frozen=True, slots=True)
class LoadBalancers:
    """The DNS names of the gateway's external and cluster-local Services."""

    external: str
    internal: str

    @staticmethod
    def _entry(domain: str) -> dict[str, Any]:
        return {"ingress": [{"domainInternal": domain}]} if domain else {"ingress": []}

    @property
    def public(self) -> dict[str, Any]:
        return self._entry(self.external)

    @property
    def private(self) -> dict[str, Any]:
        return self._entry(self.internal)


def service_domain(address: str, suffix: str = "svc.cluster.local") -> str:
    """`name.namespace` → `name.namespace.<suffix>`; longer names are kept as given."""
    address = address.strip().rstrip(".")
    if address.count(".") == 1 and suffix:
        return f"{address}.{suffix.strip('.')}"
    return address


@dataclass(frozen=True, slots=True)
class Observation:
    """What the reconciler knows about one KIngress."""

    generation: int
    invalid: str | None = None
    """Why the latest generation cannot be served (a validation error), if it cannot."""
    applied_generation: int | None = None
    """The generation handed to the gateways: the latest valid one."""
    served: bool = False
    """Every gateway serves `applied_generation` (by readiness probe, or by ACK)."""
    problems: tuple[str, ...] = ()
    """Translator errors for the applied generation (host conflicts, missing certificates)."""
    rejected: str | None = None
    """A gateway's rejection (NACK) since `applied_generation` was published."""
    waiting: str = ""
    """Why the applied generation is not served yet, when known."""
    missing: tuple[str, ...] = ()
    """Splits of the latest valid generation whose Service, or its port, does not exist:
    one line each, naming the split (`spec.rules[0].http.paths[0].splits[1]: …`)."""
    unknown: tuple[str, ...] = ()
    """Splits of the latest valid generation whose endpoints are not known yet (no
    EndpointSlice of their Service seen): one line each, as `missing`."""
    held_back: bool = False
    """The latest valid generation is not handed to the gateways (because of `missing`
    or `unknown`);
    `applied_generation`, if any, keeps serving. LoadBalancerReady is then Unknown, never
    True: a stored True for a generation means the gateways have it."""


def _condition(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    condition = {"type": kind, "status": status}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _network_configured(obs: Observation) -> dict[str, str]:
    if obs.invalid is not None:
        if obs.applied_generation is not None:
            keeps = f"generation {obs.applied_generation} is still served"
        else:
            keeps = "nothing is served"
        message = f"generation {obs.generation} is invalid ({keeps}): {obs.invalid}"
        return _condition(NETWORK_CONFIGURED, "False", INVALID, message)
    if obs.missing:
        message = "; ".join(obs.missing)
        if obs.held_back and obs.applied_generation is not None:
            message += f" (generation {obs.applied_generation} is still served)"
        elif obs.held_back:
            message += " (nothing is served yet)"
        return _condition(NETWORK_CONFIGURED, "False", BACKEND_NOT_FOUND, message)
    if obs.problems:
        return _condition(NETWORK_CONFIGURED, "False", TRANSLATION_FAILED, "; ".join(obs.problems))
    return _condition(NETWORK_CONFIGURED, "True")


def _load_balancer_ready(obs: Observation) -> dict[str, str]:
    if obs.held_back and obs.invalid is None:
        if obs.unknown and not obs.missing:
            why = f"waits for the endpoints of its splits: {'; '.join(obs.unknown)}"
        else:
            why = "waits for the Services it names"
        message = f"{WAITING}: generation {obs.generation} {why}"
        return _condition(LOAD_BALANCER_READY, "Unknown", UNINITIALIZED, message)
    if obs.applied_generation is None:
        return _condition(LOAD_BALANCER_READY, "Unknown", UNINITIALIZED, WAITING)
    if obs.unknown and obs.invalid is None:
        message = f"{WAITING}: {'; '.join(obs.unknown)}"
        return _condition(LOAD_BALANCER_READY, "Unknown", UNINITIALIZED, message)
    if obs.served:
        return _condition(LOAD_BALANCER_READY, "True")
    if obs.rejected:
        return _condition(LOAD_BALANCER_READY, "False", GATEWAY_REJECTED, obs.rejected)
    message = f"{WAITING}: {obs.waiting}" if obs.waiting else WAITING
    return _condition(LOAD_BALANCER_READY, "Unknown", UNINITIALIZED, message)


def _ready(dependents: list[dict[str, str]]) -> dict[str, str]:
    for wanted in ("False", "Unknown"):
        for condition in dependents:
            if condition["status"] == wanted:
                return _condition(
                    READY, wanted, condition.get("reason", ""), condition.get("message", "")
                )
    return _condition(READY, "True")


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def desired_status(
    obs: Observation,
    load_balancers: LoadBalancers,
    previous: Mapping[str, Any] | None = None,
    now: str | None = None,
) -> Status:
    """The status for `obs`, keeping `previous` transition times that still hold."""
    previous = previous or {}
    before = {c.get("type"): c for c in previous.get("conditions") or [] if isinstance(c, Mapping)}
    stamp = now or now_rfc3339()
    network = _network_configured(obs)
    balancer = _load_balancer_ready(obs)
    conditions = []
    for condition in sorted((balancer, network, _ready([network, balancer])), key=_type):
        old = before.get(condition["type"])
        same = old is not None and all(
            old.get(k, "") == condition.get(k, "") for k in ("status", "reason", "message")
        )
        condition["lastTransitionTime"] = (
            str(old.get("lastTransitionTime") or stamp) if same and old is not None else stamp
        )
        conditions.append(condition)
    status: Status = {"observedGeneration": obs.generation, "conditions": conditions}
    if balancer["status"] == "True":
        status["publicLoadBalancer"] = load_balancers.public
        status["privateLoadBalancer"] = load_balancers.private
    else:
        for key in ("publicLoadBalancer", "privateLoadBalancer"):
            if key in previous:
                status[key] = previous[key]
    return status


def _type(condition: Mapping[str, Any]) -> str:
    return str(condition.get("type", ""))


def _comparable(status: Mapping[str, Any] | None) -> Any:
    if not status:
        return None
    conditions = sorted(
        (
            {k: v for k, v in c.items() if k not in ("lastTransitionTime", "severity")}
            for c in status.get("conditions") or []
            if isinstance(c, Mapping)
        ),
        key=_type,
    )
    return (
        status.get("observedGeneration"),
        conditions,
        status.get("publicLoadBalancer"),
        status.get("privateLoadBalancer"),
    )


def same_status(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Equal up to transition times: writing `a` over `b` would change nothing."""
    return _comparable(a) == _comparable(b)


def condition_of(status: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    for condition in (status or {}).get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition
    return None


def reported_served(stored: Mapping[str, Any] | None, generation: int) -> bool:
    """The stored KIngress status already says `generation` is served (LoadBalancerReady)."""
    status = (stored or {}).get("status") or {}
    balancer = condition_of(status, LOAD_BALANCER_READY) or {}
    return status.get("observedGeneration") == generation and balancer.get("status") == "True"
