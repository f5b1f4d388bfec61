"""Running conformance checks and reporting them: one row per check, PASS, FAIL or SKIP,
with the reason."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc


class Skipped(Exception):
    """The check does not apply to this server; the message says why."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    description: str
    result: Literal["PASS", "FAIL", "SKIP"]
    reason: str = ""


def check_name(check: Callable[..., None]) -> str:
    return check.__name__.removeprefix("check_").replace("_", " ")


def run_check(check: Callable[..., None], channel: grpc.Channel, **options: Any) -> CheckResult:
    """Run one check, passing it the options it takes (e.g. refusal_prompt)."""
    accepted = inspect.signature(check).parameters
    given = {name: value for name, value in options.items() if name in accepted}
    description = (inspect.getdoc(check) or "").split("\n\n")[0].replace("\n", " ")
    try:
        check(channel, **given)
    except Skipped as skip:
        return CheckResult(check_name(check), description, "SKIP", str(skip))
    except AssertionError as failure:
        return CheckResult(check_name(check), description, "FAIL", str(failure) or "assertion failed")
    except grpc.RpcError as err:
        code = err.code().name if callable(getattr(err, "code", None)) else "?"
        details = err.details() if callable(getattr(err, "details", None)) else str(err)
        return CheckResult(check_name(check), description, "FAIL", f"an unexpected {code}: {details}")
    except Exception as exc:  # a reply so far off that the check could not even read it
        return CheckResult(check_name(check), description, "FAIL", f"the reply broke the check: {exc!r}")
    return CheckResult(check_name(check), description, "PASS")


def run_checks(checks: Sequence[Callable[..., None]], channel: grpc.Channel, **options: Any) -> list[CheckResult]:
    return [run_check(check, channel, **options) for check in checks]


def render(results: Sequence[CheckResult], title: str) -> Any:
    """A rich Table of the results."""
    from rich.table import Table

    table = Table(title=title, show_lines=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("reason", overflow="fold")
    style = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow"}
    for r in results:
        table.add_row(r.name, f"[{style[r.result]}]{r.result}[/]", r.reason or r.description)
    return table
