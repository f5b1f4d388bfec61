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
