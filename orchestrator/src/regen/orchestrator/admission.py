"""When cases start: by the generator's backpressure, not a fixed number.

With `concurrency: auto` a case is admitted while every generator replica has fewer than
about two batches of images asked for and not yet received, so the generator always has
its next batch queued and never idles, while cases wait their turn in the orchestrator
rather than in a server's queue. Only a memory bound (`max_cases_in_flight`) caps the
number of cases in flight. Admitted cases reserve their first round's images until
their requests reach the generator, so a burst of admissions cannot overshoot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Admission:
    def __init__(self, *, target_images: Callable[[], int], outstanding: Callable[[], int], max_in_flight: int) -> None:
        """`target_images()`: images the generator should have queued (two batches per
        replica); `outstanding()`: images asked for and not received yet."""
        self._target = target_images
        self._outstanding = outstanding
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.reserved = 0
        self.peak_in_flight = 0
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    def _room(self) -> bool:
        if self.in_flight >= self.max_in_flight:
            return False
        return self.in_flight == 0 or self._outstanding() + self.reserved < self._target()

    async def enter(self, images: int) -> None:
        """Wait for room, then count the case in and reserve its first `images`."""
        async with self._lock:  # one admission at a time: each sees the last one's reservation
            while not self._room():
                self._changed.clear()
                await self._changed.wait()
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.reserved += images

    def leave(self) -> None:
        self.in_flight -= 1
        self._changed.set()

    def images_requested(self, count: int) -> None:
        """Images reached the generator: they no longer need a reservation."""
        self.reserved = max(0, self.reserved - count)

    def images_settled(self) -> None:
        """Images arrived (or their request failed): the generator has room again."""
        self._changed.set()


@dataclass
class Ticket:
    """One case's place: whether it got past admission (else it holds a preparing slot)."""

    admitted: bool = False


class Gate(Protocol):
    @property
    def peak_in_flight(self) -> int: ...

    async def start(self) -> Ticket: ...

    async def admit(self, ticket: Ticket, images: int) -> None: ...

    def finish(self, ticket: Ticket) -> None: ...


class FixedGate:
    """`concurrency: N`: at most N cases in flight, from their first step to their last."""

    def __init__(self, concurrency: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self.in_flight = 0
        self.peak_in_flight = 0

    async def start(self) -> Ticket:
        await self._slots.acquire()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return Ticket()

    async def admit(self, ticket: Ticket, images: int) -> None:
        ticket.admitted = True

    def finish(self, ticket: Ticket) -> None:
        self.in_flight -= 1
        self._slots.release()


class AdaptiveGate:
    """`concurrency: auto`: up to `prepare_ahead` cases do their generator-independent
    steps ahead (CaseRunner.prepare); a prepared case then waits for Admission."""

    def __init__(self, admission: Admission, prepare_ahead: int) -> None:
        self.admission = admission
        self._preparing = asyncio.Semaphore(prepare_ahead)

    @property
    def peak_in_flight(self) -> int:
        return self.admission.peak_in_flight

    async def start(self) -> Ticket:
        await self._preparing.acquire()
        return Ticket()

    async def admit(self, ticket: Ticket, images: int) -> None:
        try:
            await self.admission.enter(images)
        finally:
            self._preparing.release()
        ticket.admitted = True

    def finish(self, ticket: Ticket) -> None:
        if ticket.admitted:
            self.admission.leave()
        else:
            self._preparing.release()


def make_gate(settings: Any, clients: Any, loop_settings: Any) -> Gate:
    """The gate `settings.concurrency` asks for: a number, or "auto" (backpressure)."""
    if settings.concurrency != "auto":
        return FixedGate(int(settings.concurrency))
    generator = clients.generator
    listed = len(generator.address.split(",")) if "," in generator.address else 1

    def target_images() -> int:
        # Two batches per replica: the one running and the next, queued.
        replicas = max(listed, len(generator.ledger.replicas), 1)
        return 2 * max(loop_settings.generator_max_batch, 1) * replicas

    admission = Admission(
        target_images=target_images,
        outstanding=lambda: generator.outstanding.count,
        max_in_flight=settings.max_cases_in_flight,
    )

    def on_change(delta: int) -> None:
        if delta > 0:
            admission.images_requested(delta)
        else:
            admission.images_settled()

    generator.outstanding.listeners.append(on_change)
    return AdaptiveGate(admission, settings.prepare_ahead)
