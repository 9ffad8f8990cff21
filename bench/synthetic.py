"""Synthetic routing state for benchmarks: N ingresses of 1 host and 2 splits each (or 1)."""

from __future__ import annotations

from wakegate.ingress.model import (
    Backend,
    BackendRef,
    Endpoint,
    Ingress,
    Path,
    RoutingState,
    Rule,
    Split,
)


def ingress(i: int, generation: int = 0, domain: str = "example.com", splits: int = 2) -> Ingress:
    """Ingress i; each generation moves 10 points of traffic between its two splits (with
    `splits=1`, all of it goes to the first)."""
    name = f"svc-{i}"
    first = 50 + 10 * (generation % 5) if splits == 2 else 100
    splits = tuple(
        Split(
            backend=BackendRef("default", f"{name}-0000{r}", 80),
            percent=first if r == 1 else 100 - first,
            append_headers=(
                ("Knative-Serving-Namespace", "default"),
                ("Knative-Serving-Revision", f"{name}-0000{r}"),
            ),
        )
        for r in (1, 2)[:splits]
    )
    return Ingress(
        namespace="default",
        name=name,
        generation=generation,
        rules=(Rule(hosts=(f"{name}.default.{domain}",), paths=(Path(splits=splits),)),),
    )


def backends_for(ingresses: tuple[Ingress, ...], port: int = 9000) -> dict[str, Backend]:
    out: dict[str, Backend] = {}
    for ing in ingresses:
        for split in ing.rules[0].paths[0].splits:
            out[split.backend.key] = Backend(endpoints=(Endpoint("127.0.0.1", port),))
    return out


def state(n: int, port: int = 9000, splits: int = 2) -> RoutingState:
    ingresses = tuple(ingress(i, splits=splits) for i in range(n))
    return RoutingState(ingresses=ingresses, backends=backends_for(ingresses, port))
