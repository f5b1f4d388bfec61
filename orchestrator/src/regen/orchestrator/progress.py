"""Progress of a run: a live rich display on a terminal, plain log lines otherwise.

Both show cases done and failed, how many cases are in each stage, and an estimate of
the time left (from the mean time per finished case at the current concurrency). Every
text from elsewhere (a failure's message) is scrubbed of registered secrets and shown
as text, never as rich markup.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from regen.common import secrets
from regen.orchestrator.loop import STAGES

log = logging.getLogger("regen.run")


class Reporter:
    """What a run tells about its progress; this base says nothing (`--progress none`)."""

    def start(self, total: int, skipped: int) -> None:
        pass

    def stage(self, case_id: str, stage: str) -> None:
        pass

    def case_done(self, case_id: str, summary: str) -> None:
        pass

    def case_failed(self, case_id: str, message: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass


SilentReporter = Reporter


class _Counts:
    def __init__(self) -> None:
        self.total = 0
        self.skipped = 0
        self.done = 0
        self.failed = 0
        self.stages: dict[str, str] = {}
        self.started = time.monotonic()

    def stage_counts(self) -> Counter[str]:
        return Counter(self.stages.values())

    def stage_text(self) -> str:
        counts = self.stage_counts()
        return "  ".join(f"{stage} {counts[stage]}" for stage in STAGES if counts[stage]) or "-"

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def eta_s(self) -> float | None:
        if self.finished == 0:
            return None
        rate = self.finished / (time.monotonic() - self.started)
        return (self.total - self.skipped - self.finished) / rate


class PlainReporter(Reporter):
    """One log line per finished case and per minute, for logs and CI."""

    def __init__(self, stream: IO[str] | None = None, every_s: float = 60.0) -> None:
        self.counts = _Counts()
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._last = time.monotonic()

    def _line(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {secrets.scrub(text)}", file=self.stream, flush=True)

    def _status(self) -> str:
        c = self.counts
        eta = c.eta_s()
        eta_text = f", ETA {eta:.0f} s" if eta is not None else ""
        return f"[{c.done + c.skipped}/{c.total} done, {c.failed} failed{eta_text}] in flight: {c.stage_text()}"

    def start(self, total: int, skipped: int) -> None:
        self.counts.total, self.counts.skipped = total, skipped
        self.counts.started = time.monotonic()
        resumed = f" ({skipped} already finished)" if skipped else ""
        self._line(f"{total} cases{resumed}")

    def stage(self, case_id: str, stage: str) -> None:
        self.counts.stages[case_id] = stage
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self._line(self._status())

    def case_done(self, case_id: str, summary: str) -> None:
        self.counts.stages.pop(case_id, None)
        self.counts.done += 1
        self._line(f"{case_id}: done, {summary} {self._status()}")

    def case_failed(self, case_id: str, message: str) -> None:
        self.counts.stages.pop(case_id, None)
        self.counts.failed += 1
        self._line(f"{case_id}: FAILED: {message} {self._status()}")

    def message(self, text: str) -> None:
        self._line(text)

    def stop(self) -> None:
        pass


class RichReporter(Reporter):
    """A progress bar with done/failed counts, ETA, and the number of cases per stage."""

    def __init__(self, console: Console | None = None) -> None:
        self.counts = _Counts()
        self.console = console or Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]cases"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[done]} done [red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.bar.add_task("cases", total=0, done=0, failed=0)
        self.stages_line = Text()
        self.live = Live(Group(self.bar, self.stages_line), console=self.console, refresh_per_second=4, transient=False)

    def _refresh(self) -> None:
        c = self.counts
        self.bar.update(self.task, completed=c.skipped + c.finished, done=c.done + c.skipped, failed=c.failed)
        self.stages_line.plain = f"in flight: {c.stage_text()}"

    def start(self, total: int, skipped: int) -> None:
        self.counts.total, self.counts.skipped = total, skipped
        self.counts.started = time.monotonic()
        # The bar's ETA must come from this invocation's speed, not from resumed cases.
        self.bar.reset(self.task, total=total, completed=skipped, done=skipped, failed=0)
        self.live.start()
        if skipped:
            self.console.print(f"resuming: {skipped} of {total} cases already finished", markup=False)

    def stage(self, case_id: str, stage: str) -> None:
        self.counts.stages[case_id] = stage
        self._refresh()

    def case_done(self, case_id: str, summary: str) -> None:
        self.counts.stages.pop(case_id, None)
        self.counts.done += 1
        self._refresh()

    def case_failed(self, case_id: str, message: str) -> None:
        self.counts.stages.pop(case_id, None)
        self.counts.failed += 1
        line = f"[red]{escape(case_id)} failed:[/red] {escape(secrets.scrub(message))}"
        self.console.print(line, markup=True, highlight=False)
        self._refresh()

    def message(self, text: str) -> None:
        self.console.print(secrets.scrub(text), markup=False, highlight=False)

    def stop(self) -> None:
        self._refresh()
        self.live.stop()


def make_reporter(kind: str, stream: Any = None) -> Reporter:
    """`auto`: rich when stderr is a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    if kind == "auto":
        kind = "rich" if stream.isatty() else "plain"
    if kind == "rich":
        return RichReporter(Console(file=stream))
    if kind == "none":
        return SilentReporter()
    return PlainReporter(stream)
