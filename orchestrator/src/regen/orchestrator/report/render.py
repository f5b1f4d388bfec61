"""HTML pages from jinja2 templates, self-contained: the style sheet, the script and
the plots (SVG) are inline; images are files of the run folder referenced by relative
paths; nothing is fetched from the network."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from regen.orchestrator import outcomes
from regen.orchestrator.report import charts
from regen.orchestrator.report.model import RunView, load_run
from regen.orchestrator.report.thumbs import Thumbnails
from regen.orchestrator.results import atomic_write_bytes
from regen.orchestrator.usage import Totals

REPORT_FILE = "report.html"
HERE = Path(__file__).parent


def num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def usd(value: float | None) -> str:
    return "n/a" if value is None else f"${value:.4f}"


def interval(summary: dict[str, Any] | None, digits: int = 4) -> str:
    if not summary or summary.get("ci_low") is None:
        return "—"
    return f"[{num(summary['ci_low'], digits)}, {num(summary['ci_high'], digits)}]"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=num, pct=pct, usd=usd, interval=interval)
    env.globals.update(
        usage_fields=(*Totals.COUNTS, "cost_usd"),
        # The style sheet and scripts are ours, inlined as they are (not HTML-escaped).
        static=lambda name: markupsafe.Markup((HERE / "static" / name).read_text()),
    )
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def generation_settings(run: dict[str, Any]) -> dict[str, Any]:
    """The image parameters in effect: the run's where set, else the generator's defaults."""
    given = run["config"]["generation"]
    model = run["models"]["generator"]
    defaults = {
        "width": model.get("default_width"),
        "height": model.get("default_height"),
        "steps": model.get("default_steps"),
        "guidance_scale": model.get("default_guidance_scale"),
    }
    effective = {name: given.get(name) if given.get(name) is not None else value for name, value in defaults.items()}
    if given.get("negative_prompt"):
        effective["negative_prompt"] = given["negative_prompt"]
    return effective


def case_values(view: RunView) -> list[dict[str, float | None]]:
    """Each case's headline value per metric (the penalty when refused), for sorting."""
    return [{m: case.outcome.headline(m) for m in view.metrics} for case in view.cases]


def _charts(view: RunView) -> dict[str, Any]:
    bench = view.benchmark
    curves = {
        "headline (refusals at 0)": [r["mean_best_selection"] for r in bench["rounds"]],
        "answered only": [r["mean_best_selection"] for r in bench["answered"]["rounds"]],
    }
    refused = bench["cases"]["refused"]
    distributions = []
    for metric in view.metrics:
        values = [v for case in view.cases if (v := case.outcome.answered(metric)) is not None]
        note = f"({len(values)} answered, {refused} refused at {num(outcomes.penalty(metric), 0)})" if refused else ""
        distributions.append(charts.distribution_chart(metric, values, note=note))
    return {"rounds": charts.rounds_chart(curves), "distributions": distributions}


def write_report(run_dir: Path) -> Path:
    """Write `<run>/report.html` (and the thumbnails it needs); returns its path."""
    run_dir = Path(run_dir)
    thumbs = Thumbnails(run_dir)
    view = load_run(run_dir, thumbs)
    thumbs.write()
    page = render(
        "report.html.j2",
        view=view,
        bench=view.benchmark,
        run=view.run,
        values=case_values(view),
        generation=generation_settings(view.run),
        charts=_charts(view),
        penalty=outcomes.penalty,
    )
    path = run_dir / REPORT_FILE
    atomic_write_bytes(path, page.encode())
    return path
