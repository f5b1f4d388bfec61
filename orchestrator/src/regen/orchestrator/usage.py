"""What a case cost: calls to each service, retries, and what remote APIs reported.

Each case runs in its own asyncio task; `CaseRunner` puts a `CaseUsage` into the
context variable `CURRENT`, and the gRPC clients add every call they make to it, so no
call site has to carry usage around. A call outside a case (Info, health) is not counted.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Totals:
    # gRPC calls made, each attempt counted, and of them, attempts after a failure.
    calls: int = 0
    retries: int = 0
    # Images the generator delivered, and prompts it refused.
    images_received: int = 0
    refusals: int = 0
    # What the service reported (regen.v1.Usage): remote API calls and retries behind
    # the answers, billed tokens and images, and cost where the API stated one.
    api_calls: int = 0
    api_retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    cost_usd: float | None = None
    # The describer's model calls behind its answers (CallInfo.attempts, and a failed
    # call's ErrorInfo metadata), of them repairs of invalid answers, and answers served
    # from its cache (which cost nothing).
    model_calls: int = 0
    repairs: int = 0
    cache_hits: int = 0

    COUNTS: ClassVar[tuple[str, ...]] = (
        "calls",
        "retries",
        "images_received",
        "refusals",
        "api_calls",
        "api_retries",
        "input_tokens",
        "output_tokens",
        "images",
        "model_calls",
        "repairs",
        "cache_hits",
    )

    def add_reported(self, usage: Any) -> None:
        """Add a regen.v1.Usage message."""
        self.api_calls += usage.api_calls
        self.api_retries += usage.retries
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.images += usage.images
        if usage.HasField("cost_usd"):
            self.cost_usd = (self.cost_usd or 0.0) + usage.cost_usd

    def add_described(self, call: Any) -> None:
        """Add a regen.v1.CallInfo: its usage, model calls, repairs, a cache hit."""
        self.add_reported(call.usage)
        self.model_calls += call.attempts
        self.repairs += call.repairs
        self.cache_hits += int(call.cached)

    def add_failed(self, cost: dict[str, int]) -> None:
        """Add what a failed call cost, as the service reported it (ErrorInfo metadata)."""
        self.model_calls += cost.get("attempts", 0)
        self.repairs += cost.get("repairs", 0)
        self.api_calls += cost.get("api_calls", 0)
        self.input_tokens += cost.get("input_tokens", 0)
        self.output_tokens += cost.get("output_tokens", 0)

    def add(self, other: Totals) -> None:
        for name in self.COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + other.cost_usd

    def record(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (*self.COUNTS, "cost_usd")}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Totals:
        totals = cls()
        for name in cls.__dataclass_fields__:
            if record.get(name) is not None:
                setattr(totals, name, record[name])
        return totals


@dataclass
class CaseUsage:
    """Totals per service and method ("describer" -> "Variants" -> Totals)."""

    services: dict[str, dict[str, Totals]] = field(default_factory=dict)

    def totals(self, service: str, method: str) -> Totals:
        return self.services.setdefault(service, {}).setdefault(method, Totals())

    def add(self, other: CaseUsage, suffix: str = "") -> None:
        """Add another's totals, each method's name followed by `suffix`."""
        for service, methods in other.services.items():
            for method, totals in methods.items():
                self.totals(service, method + suffix).add(totals)

    def record(self) -> dict[str, dict[str, Any]]:
        return {
            service: {method: totals.record() for method, totals in sorted(methods.items())}
            for service, methods in sorted(self.services.items())
        }

    @classmethod
    def from_record(cls, record: dict[str, dict[str, Any]]) -> CaseUsage:
        """The inverse of `record` (what a finished case's "usage" holds)."""
        return cls(
            {service: {m: Totals.from_record(t) for m, t in methods.items()} for service, methods in record.items()}
        )


CURRENT: contextvars.ContextVar[CaseUsage | None] = contextvars.ContextVar("regen_case_usage", default=None)


def count_call(service: str, method: str, *, attempts: int) -> None:
    usage = CURRENT.get()
    if usage is not None:
        totals = usage.totals(service, method)
        totals.calls += attempts
        totals.retries += attempts - 1


def count_image(refused: bool) -> None:
    usage = CURRENT.get()
    if usage is not None:
        totals = usage.totals("generator", "Generate")
        if refused:
            totals.refusals += 1
        else:
            totals.images_received += 1


def count_described(service: str, method: str, call: Any) -> None:
    """Add a describer answer's regen.v1.CallInfo."""
    usage = CURRENT.get()
    if usage is not None:
        usage.totals(service, method).add_described(call)


def count_failed(service: str, method: str, cost: dict[str, int]) -> None:
    """Add what a failed attempt cost the service (its ErrorInfo metadata's numbers)."""
    usage = CURRENT.get()
    if usage is not None and cost:
        usage.totals(service, method).add_failed(cost)


def count_reported(service: str, method: str, reported: Any) -> None:
    """Add a regen.v1.Usage a service sent back (a GeneratedImage's, a CallInfo's)."""
    usage = CURRENT.get()
    if usage is not None:
        usage.totals(service, method).add_reported(reported)


def summarize(records: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Sums over cases' usage records: per service and method, per service, and overall."""
    by_method: dict[str, dict[str, Totals]] = {}
    for record in records:
        for service, methods in record.items():
            for method, values in methods.items():
                by_method.setdefault(service, {}).setdefault(method, Totals()).add(Totals.from_record(values))
    by_service: dict[str, Totals] = {}
    overall = Totals()
    for service, methods in by_method.items():
        service_totals = by_service.setdefault(service, Totals())
        for totals in methods.values():
            service_totals.add(totals)
        overall.add(service_totals)
    return {
        "total": overall.record(),
        "services": {
            service: {
                **by_service[service].record(),
                "by_method": {method: totals.record() for method, totals in sorted(methods.items())},
            }
            for service, methods in sorted(by_method.items())
        },
    }
