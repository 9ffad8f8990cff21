"""Knative's condition types and the living condition set that derives `Ready`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

CONFIGURATIONS_READY = "ConfigurationsReady"
ROUTES_READY = "RoutesReady"
READY = "Ready"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""

    @property
    def is_true(self) -> bool:
        return self.status is ConditionStatus.TRUE

    def to_dict(self, last_transition_time: str) -> dict[str, str]:
        out = {"type": self.type, "status": self.status.value}
        if self.reason:
            out["reason"] = self.reason
        if self.message:
            out["message"] = self.message
        out["lastTransitionTime"] = last_transition_time
        return out


def rfc3339(moment: datetime) -> str:
    """Kubernetes' timestamp form, whole seconds in UTC: 2024-05-01T12:00:00Z."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition_of(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The condition of type `kind` in a status object, or {}."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def ready_condition(dependents: Sequence[Condition]) -> Condition:
    """Knative's living condition set: the first False dependent, else the first Unknown."""
    for wanted in (ConditionStatus.FALSE, ConditionStatus.UNKNOWN):
        for condition in dependents:
            if condition.status is wanted:
                return Condition(READY, wanted, condition.reason, condition.message)
    return Condition(READY, ConditionStatus.TRUE)
